"""engine.checkpoint: atomic writes, weights_only loading, clear refusals, model rebuilt alone."""

import os

import pytest
import torch

from engine.checkpoint import FORMAT, load, model_from_checkpoint, resume_path, save_atomic
from engine.config import Config
from engine.errors import EngineError, UsageError
from engine.models import build_model


def checkpoint_for(model):
    return {"format": FORMAT, "config": Config().to_dict(), "epoch": 1, "model": model.state_dict(),
            "data": {"name": "synthetic", "classes": [str(i) for i in range(10)], "shape": [3, 32, 32],
                     "mean": [0.5] * 3, "std": [0.25] * 3, "flip": True}}


def test_save_atomic_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "deep" / "last.pt"
    save_atomic({"a": torch.arange(3)}, path)
    save_atomic({"a": torch.arange(5)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.arange(5))
    assert os.listdir(path.parent) == ["last.pt"]


def test_a_failed_save_keeps_the_old_file(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic({"a": 1}, path)
    with pytest.raises(Exception):
        save_atomic({"a": lambda: 0}, path)  # lambdas cannot be pickled
    assert torch.load(path, weights_only=True) == {"a": 1}
    assert os.listdir(tmp_path) == ["last.pt"]


def test_load_and_rebuild_the_model(tmp_path):
    torch.manual_seed(0)
    model = build_model("cifar_cnn", (3, 32, 32), 10)
    save_atomic(checkpoint_for(model), tmp_path / "c.pt")
    rebuilt = model_from_checkpoint(load(tmp_path / "c.pt"))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(rebuilt(x), model.eval()(x))


def test_refusals_are_one_line(tmp_path):
    with pytest.raises(UsageError, match="no checkpoint at"):
        load(tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EngineError, match="junk.pt is not a readable engine checkpoint"):
        load(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(EngineError, match="other.pt is not an engine checkpoint"):
        load(tmp_path / "other.pt")


def test_pickled_code_is_refused(tmp_path):
    torch.save({"format": FORMAT, "config": Config()}, tmp_path / "code.pt")  # a dataclass needs unpickling code
    with pytest.raises(EngineError, match="not a readable engine checkpoint"):
        load(tmp_path / "code.pt")


def test_resume_path(tmp_path):
    with pytest.raises(UsageError, match="nothing to resume .* does not exist"):
        resume_path(tmp_path / "runs" / "latest")
    (tmp_path / "run").mkdir()
    with pytest.raises(UsageError, match="nothing to resume .* has no last.pt"):
        resume_path(tmp_path / "run")
    (tmp_path / "run" / "last.pt").write_bytes(b"")
    assert resume_path(tmp_path / "run") == tmp_path / "run" / "last.pt"
    assert resume_path(tmp_path / "run" / "last.pt") == tmp_path / "run" / "last.pt"
    (tmp_path / "run" / "best.pt").write_bytes(b"")
    with pytest.raises(UsageError, match="takes a run directory or its last.pt"):
        resume_path(tmp_path / "run" / "best.pt")


def test_ctrl_c_waits_for_the_writes_to_finish(tmp_path):
    import signal

    from engine.checkpoint import interrupts_held

    finished = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            with interrupts_held():  # nested: still one hold, released by the outer block
                os.kill(os.getpid(), signal.SIGINT)
                save_atomic({"a": 1}, tmp_path / "last.pt")
                finished.append("inner")
            save_atomic({"a": 2}, tmp_path / "best.pt")
            finished.append("outer")
    assert finished == ["inner", "outer"]
    assert torch.load(tmp_path / "best.pt", weights_only=True) == {"a": 2}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
