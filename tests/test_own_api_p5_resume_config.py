"""train(cfg, resume=checkpoint) from Python keeps the run's fixed settings, as `engine train
--resume` does: a Config changed after resume_config (a learning rate, an optimizer) was resumed
with the change, silently (and a changed out made a second run of it elsewhere); now it is one UsageError before any work, and the run is untouched."""

import dataclasses

import pytest

from engine.config import Config
from engine.errors import UsageError
from engine.resume import resume_config
from engine.train import train


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A 2-epoch run stopped after its first epoch (its log callback's Ctrl-C)."""
    out = tmp_path_factory.mktemp("stopped") / "run"

    def stop(line):
        if line.startswith("Epoch"):
            raise KeyboardInterrupt

    cfg = Config(data="synthetic", limit_train=32, limit_test=16, batch_size=16, epochs=2, amp=False, device="cpu",
                 out=str(out))
    with pytest.raises(KeyboardInterrupt, match="interrupted") as caught:
        train(cfg, log=stop)
    assert not isinstance(caught.value, Exception)  # a caller's `except Exception` does not swallow Ctrl-C
    return out


@pytest.mark.slow
@pytest.mark.parametrize("change, said", [
    (dict(lr=0.5), r"--lr 0.5 differs from its --lr 0.05 \(start a new run"),
    (dict(optimizer="adamw"), "--optimizer adamw differs from its --optimizer sgd"),
    (dict(epochs=3), "--epochs 3 differs from its --epochs 2"),
    (dict(out="elsewhere"), "continues the run in the Config's out, and elsewhere holds no last.pt"),
    (dict(out=None), "None holds no last.pt"),
])
def test_a_changed_fixed_setting_is_refused_and_the_run_is_untouched(stopped_run, change, said, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg, checkpoint = resume_config(stopped_run, say=lambda *_: None)
    before = {path.name: path.read_bytes() for path in stopped_run.iterdir() if path.is_file()}
    with pytest.raises(UsageError, match=said):
        train(dataclasses.replace(cfg, **change), resume=checkpoint, log=lambda *_: None)
    assert not (tmp_path / "elsewhere").exists()
    assert {path.name: path.read_bytes() for path in stopped_run.iterdir() if path.is_file()} == before


@pytest.mark.slow
def test_what_may_change_on_resume_still_may(stopped_run):
    cfg, checkpoint = resume_config(stopped_run, say=lambda *_: None)
    _, metrics = train(dataclasses.replace(cfg, quiet=True, batch_size=16), resume=checkpoint, log=lambda *_: None)
    assert [m["epoch"] for m in metrics] == [1, 2]
