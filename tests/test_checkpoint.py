"""engine.checkpoint: atomic writes, weights_only loading, clear refusals, model rebuilt alone."""

import os
import re

import pytest
import torch

from engine.checkpoint import FORMAT, Checkpoint, load, model_from_checkpoint, save_atomic
from engine.config import Config
from engine.errors import EngineError, UsageError
from engine.models import build_model
from engine.resume import resume_path


def checkpoint_for(model):
    return {"format": FORMAT, "config": Config().to_dict(), "epoch": 1, "model": model.state_dict(),
            "data": {"name": "synthetic", "classes": [str(i) for i in range(10)], "shape": [3, 32, 32],
                     "mean": [0.5] * 3, "std": [0.25] * 3, "flip": True}}


def test_save_atomic_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "deep" / "last.pt"
    save_atomic({"a": torch.arange(3)}, path, make_parents=True)
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
    with pytest.raises(EngineError, match="no checkpoint at"):
        load(tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EngineError, match="junk.pt is not a readable engine checkpoint"):
        load(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(EngineError, match="other.pt is not an engine checkpoint"):
        load(tmp_path / "other.pt")


def test_pickled_code_is_refused(tmp_path):
    torch.save({"format": FORMAT, "config": Config()}, tmp_path / "code.pt")  # a dataclass needs unpickling code
    with pytest.raises(EngineError, match=r"holds pickled code \(engine.config.Config\)"):
        load(tmp_path / "code.pt")


def test_a_python_file_given_as_a_checkpoint_is_not_called_pickled_code(tmp_path):
    """'import torch' opens with 'i', pickle's INST opcode: the disassembler reads words, not a global."""
    from engine.safe_load import read_weights_only

    (tmp_path / "nets.py").write_text("import torch\nimport torch.nn as nn\n\n\nclass Net(nn.Module):\n    pass\n")
    with pytest.raises(EngineError) as caught:
        load(tmp_path / "nets.py")
    assert "pickled code" not in str(caught.value) and "nets.py is not a readable engine checkpoint" in str(caught.value)
    with pytest.raises(EngineError, match="is not a readable weights file") as caught:
        read_weights_only(tmp_path / "nets.py", "weights file")
    assert "pickled code" not in str(caught.value)


def test_a_plain_pickle_carrying_code_is_named_without_a_torch_warning(tmp_path, recwarn):
    import collections
    import pickle
    import zipfile

    marker = tmp_path / "ran"
    with open(tmp_path / "evil.pt", "wb") as file:
        pickle.dump({"format": FORMAT, "x": Payload(marker)}, file, protocol=4)  # torch stops at protocol 4's frame
    with pytest.raises(EngineError, match=r"evil.pt holds pickled code \((posix|nt).system\)"):
        load(tmp_path / "evil.pt")
    assert not marker.exists() and not [w for w in recwarn if "pickle protocol" in str(w.message)]
    with open(tmp_path / "plain.pt", "wb") as file:  # only what torch allows: not called code
        pickle.dump(collections.OrderedDict(a=1), file, protocol=4)
    with pytest.raises(EngineError, match="plain.pt is not a readable engine checkpoint .not a PyTorch checkpoint"):
        load(tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "other.pt", "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(EngineError, match=r"other.pt is not a readable engine checkpoint \(a zip archive, but not one "
                                          r"torch.save wrote\)$"):
        load(tmp_path / "other.pt")


@pytest.mark.slow
def test_an_onnx_file_named_as_a_checkpoint_is_said_to_be_one(tiny_onnx, tmp_path):
    import shutil

    shutil.copyfile(tiny_onnx, tmp_path / "model.pt")
    with pytest.raises(EngineError, match=r"model.pt is not a readable engine checkpoint \(it is an ONNX model, which "
                                          r"engine eval and predict take as a file named .onnx\)"):
        load(tmp_path / "model.pt")


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
    (tmp_path / "run" / "last.pt").unlink()  # best.pt alone: how to go on from it
    with pytest.raises(UsageError, match="has best.pt but no last.pt.*copy it as last.pt into a new run directory"):
        resume_path(tmp_path / "run")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "latest").symlink_to(tmp_path / "deleted-run")
    with pytest.raises(UsageError, match=f"latest links to {tmp_path / 'deleted-run'}, which does not exist any more"):
        resume_path(tmp_path / "runs" / "latest")


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


class Payload:
    """Pickles as a call of os.system: unpickling it would create `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def hostile(path, marker):
    """A file that looks like an engine checkpoint and carries a pickled callable."""
    torch.save({"format": FORMAT, "config": Config().to_dict(), "epoch": 1, "data": {}, "model": {"w": Payload(marker)}},
               path)
    return path


def engine(*args, cwd=None):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
@pytest.mark.parametrize("command", ["eval", "export", "export-default", "resume", "resume-latest"])
def test_a_hostile_checkpoint_never_runs_whichever_command_opens_it(tmp_path, command):
    marker = tmp_path / "PAYLOAD_RAN"
    run = tmp_path / "runs" / "run"
    run.mkdir(parents=True)
    (tmp_path / "runs" / "latest").symlink_to("run")
    for name in ("last.pt", "best.pt"):
        hostile(run / name, marker)
    argv = {"eval": ["eval", str(run / "best.pt")],
            "export": ["export", str(tmp_path / "m.onnx"), "--checkpoint", str(run / "best.pt")],
            "export-default": ["export", "m.onnx"],  # runs/latest/best.pt
            "resume": ["train", "--resume", str(run)],
            "resume-latest": ["train", "--resume"]}[command]
    result = engine(*argv, cwd=tmp_path)
    assert not marker.exists()
    assert result.returncode == 1 and "Traceback" not in result.stderr
    opened = run / ("last.pt" if command.startswith("resume") else "best.pt")
    assert result.stderr.strip().splitlines() == [
        f"engine: error: {opened} "
        "holds pickled code (posix.system), not only tensors and plain values; refusing to load it "
        "(checkpoints are opened weights-only)"]


def test_a_hostile_decode_cache_is_decoded_again_not_run(tmp_path):
    import numpy as np
    from PIL import Image

    from engine.data.imagefolder import dataset_label, read, source_key

    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / "img" / split / c).mkdir(parents=True)
            Image.fromarray(np.full((4, 4, 3), 9, np.uint8)).save(tmp_path / "img" / split / c / "0.png")
    marker = tmp_path / "PAYLOAD_RAN"
    cache = tmp_path / "cache"
    cache.mkdir()
    folder = tmp_path / "img"
    hostile(cache / f"{dataset_label(str(folder))}-{source_key(folder)}.pt", marker)
    data = read(folder, cache, log=lambda *_: None)
    assert not marker.exists() and data.classes == ["a", "b"]


def test_a_checkpoint_of_another_model_names_the_first_mismatch(tmp_path):
    torch.manual_seed(0)
    checkpoint = checkpoint_for(build_model("cifar_cnn", (3, 32, 32), 10))
    checkpoint["config"]["model"] = "cifar_seq"
    with pytest.raises(EngineError, match=r"c.pt does not fit cifar_seq on 3x32x32 images: features.0.conv.weight is "
                                          r"\(64, 3, 3, 3\) in it, \(32, 3, 5, 5\) in the model"):
        model_from_checkpoint(Checkpoint.from_dict(checkpoint), "c.pt")
    checkpoint = checkpoint_for(build_model("cifar_cnn", (3, 32, 32), 10))
    missing = next(iter(checkpoint["model"]))
    del checkpoint["model"][missing]
    with pytest.raises(EngineError, match=f"it has no {missing} \\(a checkpoint of another model\\?\\)"):
        model_from_checkpoint(Checkpoint.from_dict(checkpoint), "c.pt")
    checkpoint = checkpoint_for(build_model("cifar_cnn", (3, 32, 32), 10))
    checkpoint["data"]["classes"] = checkpoint["data"]["classes"][:5]  # another dataset: 5 classes
    with pytest.raises(EngineError, match=r"fc2.weight is \(10, 256\) in it, \(5, 256\) in the model \(another model, image size or class count\?\)"):
        model_from_checkpoint(Checkpoint.from_dict(checkpoint), "c.pt")
    checkpoint = checkpoint_for(build_model("cifar_cnn", (3, 32, 32), 10))
    checkpoint["model"]["extra.weight"] = torch.zeros(1)
    with pytest.raises(EngineError, match="it has extra.weight, which the model lacks"):
        model_from_checkpoint(Checkpoint.from_dict(checkpoint), "c.pt")


@pytest.mark.slow
@pytest.mark.parametrize("key", ["optimizer", "rng", "metrics", "scheduler"])
def test_resume_without_optimizer_rng_or_metrics_is_one_line(tiny_run, tmp_path, capsys, key):
    from engine.cli import main

    run = tmp_path / "run"
    run.mkdir()
    checkpoint = load(tiny_run[0] / "last.pt").to_dict()
    del checkpoint[key]
    torch.save(checkpoint, run / "last.pt")
    assert main(["train", "--resume", str(run)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"engine: error: --resume: {run / 'last.pt'} has no {key} (it holds weights only); "
                   "evaluate or export it, or start a new run"]


def test_damaged_layouts_are_one_line(tmp_path):
    base = checkpoint_for(build_model("cifar_cnn", (3, 32, 32), 10))
    for change, words in [(lambda c: c.pop("model"), "incomplete engine checkpoint: it has no model"),
                          (lambda c: c["data"].update(shape=[3, 32]), "image shape [3, 32] is not C, H, W"),
                          (lambda c: c["data"].update(classes=["one"]), "fewer than 2 classes"),
                          (lambda c: c.update(config={"lr": 1}), "its config names no model and data"),
                          (lambda c: c["model"].update(w=[1, 2]), "not a state dict of tensors"),
                          (lambda c: c["model"]["fc2.bias"].fill_(float("nan")), "its fc2.bias holds NaN values"),
                          (lambda c: c.update(model_ema={"fc2.bias": torch.full((10,), float("nan"))}),
                           "its model_ema fc2.bias holds NaN values")]:
        checkpoint = {**base, "data": dict(base["data"]), "model": {k: v.clone() for k, v in base["model"].items()}}
        change(checkpoint)
        torch.save(checkpoint, tmp_path / "c.pt")
        with pytest.raises(EngineError, match=re.escape(words)):
            load(tmp_path / "c.pt")


def test_a_best_pt_that_cannot_be_rebuilt_is_said_and_replaced_by_the_next_best(tiny_run, tmp_path, capsys):
    """best.pt of an earlier epoch than last.pt's, damaged or another run's: a warning, and True so
    the run's next best epoch replaces it (the run kept reporting it as its best, and eval then failed)."""
    import shutil
    from dataclasses import replace

    from engine.report import RunDir
    from engine.restore import repair_run

    shutil.copytree(tiny_run[0], tmp_path / "run")
    first = load(tmp_path / "run" / "last.pt")  # epoch 1, also best.pt
    m = first.metrics[0]
    later = replace(first, epoch=2, metrics=[m, {**m, "epoch": 2, "test_acc": m["test_acc"] / 2}],
                    best={"acc": m["test_acc"], "split": "test", "epoch": 1})  # last.pt of epoch 2, best epoch 1
    run = RunDir(tmp_path / "run", resuming=True)
    try:
        assert repair_run(run, later, print) is False  # best.pt is this run's epoch 1
        save_atomic(replace(first, metrics=[{**m, "test_acc": 0.99}]).to_dict(), tmp_path / "run" / "best.pt")
        assert repair_run(run, later, print) is True
        assert ("best.pt (epoch 1) is not this run's (its metrics are not the start of last.pt's) and cannot be "
                "rebuilt; the best epoch from here on becomes best.pt") in capsys.readouterr().err
        (tmp_path / "run" / "best.pt").write_bytes(b"")
        assert repair_run(run, later, print, epochs_left=False) is True
        assert "is unreadable and cannot be rebuilt; no epoch is left to train" in capsys.readouterr().err
    finally:
        run.close()


def test_a_run_whose_images_moved_resumes_from_where_they_are(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from engine.cli import main

    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("test", 4)):
        for name in ("a", "b"):
            (tmp_path / "photos" / split / name).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "photos" / split / name / f"{i}.png")
    run, flags = tmp_path / "run", ["--cache-dir", str(tmp_path / "cache"), "--no-quiet"]
    assert main(["train", "--data", str(tmp_path / "photos"), "--epochs", "1", "--batch-size", "8", "--model", "lenet",
                 "--out", str(run), "--quiet", "--cache-dir", str(tmp_path / "cache")]) == 0
    (tmp_path / "photos").rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), *flags]) == 2
    assert f"the run's data {tmp_path / 'photos'} is not there any more; if it moved, resume with --data" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--data", str(tmp_path / "moved"), *flags]) == 0
    out = capsys.readouterr().out
    assert f"Data: {tmp_path / 'moved'} in place of the run's {tmp_path / 'photos'}" in out and "Nothing left to train" in out
    first = next((tmp_path / "moved" / "train" / "a").iterdir())  # other images in the moved folder: refused
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(first)
    assert main(["train", "--resume", str(run), "--data", str(tmp_path / "moved"), *flags]) == 1
    assert "changed since the run started" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--data", str(tmp_path / "moved"), "--no-channels-last", *flags]) == 2
    assert "--no-channels-last differs from its --channels-last (start a new run" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_repairs_best_pt_and_metrics_from_last_pt(tiny_run, tmp_path, capsys):
    """A kill between the renames of last.pt and best.pt/metrics.jsonl: last.pt is the commit record."""
    import shutil

    from engine.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    (run / "best.pt").unlink()  # as if killed right after last.pt's rename in the first epoch
    (run / "metrics.jsonl").write_text("")
    (run / "curves.png").unlink()
    assert main(["train", "--resume", str(run), "--no-quiet"]) == 0  # all epochs done: it trains nothing, but repairs
    assert load(run / "best.pt").epoch == 1
    best, last = load(run / "best.pt").model, load(run / "last.pt").model
    assert all(torch.equal(value, best[key]) for key, value in last.items())
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1 and (run / "curves.png").exists()
    out = capsys.readouterr().out
    assert f"Nothing left to train: {run} finished" in out and "Saved" not in out
    assert main(["train", "--resume", str(run), "--quiet"]) == 0  # the command's only result: said under --quiet too
    assert capsys.readouterr().out.splitlines() == [f"Nothing left to train: {run} finished (best test accuracy "
                                                    f"{load(run / 'best.pt').best['acc'] * 100:.1f}%: best.pt; confusion.png "
                                                    "written again)"]


def test_resume_refuses_data_whose_images_changed(tmp_path, capsys):
    """Same classes and image shape, other images: the step count and the schedule would jump."""
    import numpy as np
    from PIL import Image

    from engine.cli import main

    def picture(path, value):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)

    folder, run = tmp_path / "bugs", tmp_path / "run"
    for split, n in (("train", 12), ("test", 4)):
        for c, name in enumerate(("ants", "bees")):
            for k in range(n):
                picture(folder / split / name / f"{k}.png", 60 * c + k)
    common = ["--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(["train", "--data", str(folder), "--model", "mnist_cnn", "--batch-size", "8", "--epochs", "1",
                 "--out", str(run), *common]) == 0
    assert main(["train", "--resume", str(run), *common]) == 0  # the same data: fine
    capsys.readouterr()
    picture(folder / "train" / "ants" / "3.png", 200)  # one image redrawn: same count, classes and shape
    assert main(["train", "--resume", str(run), *common]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"engine: error: --resume: the data at {folder} changed since the run started (train images or labels differ); "
        "restore it, or start a new run on the new data"]
    picture(folder / "train" / "bees" / "12.png", 1)
    assert main(["train", "--resume", str(run), *common]) == 1
    assert "(train images 24 -> 25)" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"hi\n", b"", b"\x80\x02}q\x00"])
def test_a_file_that_is_no_checkpoint_says_so_in_words(tmp_path, content):
    from engine.safe_load import read_weights_only

    (tmp_path / "afile").write_bytes(content)
    with pytest.raises(EngineError, match=r"afile is not a readable weights file \((not a PyTorch checkpoint|its zip)"):
        read_weights_only(tmp_path / "afile", "weights file")


def test_a_checkpoint_named_from_the_home_folder_is_found(tiny_run, tmp_path, monkeypatch):
    """engine eval "~/runs/a/best.pt" (quoted, or after an =) reached the engine with its ~: 'no checkpoint at ~/...'."""
    import shutil

    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copy(tiny_run[1], tmp_path / "best.pt")
    assert load("~/best.pt").epoch == load(tiny_run[1]).epoch
    with pytest.raises(EngineError, match=f"no checkpoint at {tmp_path}/absent.pt"):
        load("~/absent.pt")
