"""engine.report: the tutorial's epoch line, the run directory's files and its safety rules."""

import json
import os

import pytest

from engine.errors import EngineError, UsageError
from engine.report import RunDir, default_run_dir, format_epoch
from engine.resume import resume_path

METRICS = {"epoch": 1, "train_acc": 0.4342, "train_loss": 1.91234, "test_acc": 0.47, "test_loss": 1.4801,
           "images_per_s": 2050.4, "epoch_s": 26.08}


def test_epoch_line_is_the_tutorials_format_plus_speed():
    assert format_epoch(METRICS) == ("Epoch: 1, Train_acc:43.4%, Train_loss:1.912, Test_acc:47.0%, "
                                     "Test_loss:1.480, 2,050 img/s, 26.1 s")


def test_run_files_are_written_whole(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_config({"model": "cifar_cnn"}, {"classes": ["a", "b"]})
    run.write_metrics([METRICS, dict(METRICS, epoch=2)])
    run.plot([METRICS, dict(METRICS, epoch=2, test_acc=0.6)])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["classes"] == ["a", "b"]
    assert [json.loads(line)["epoch"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    assert (tmp_path / "run" / ".engine.lock").read_text().strip() == str(os.getpid())  # held while the run lives
    run.close()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "curves.png", "metrics.jsonl"]


def test_a_run_failing_before_its_first_checkpoint_gives_latest_back_to_the_run_before(tmp_path):
    """runs/latest moves to a run once it trains; a run that fails before its first checkpoint is
    discarded, and the link points at the run before again (not nowhere), unless that one is gone."""
    latest = tmp_path / "runs" / "latest"
    good = RunDir(tmp_path / "runs" / "good")
    good.point_latest()
    (good.path / "last.pt").write_bytes(b"a checkpoint")
    good.close()
    failed = RunDir(tmp_path / "runs" / "failed")
    failed.point_latest()
    assert latest.resolve() == failed.path.resolve()
    failed.discard_unsaved()
    assert latest.resolve() == good.path.resolve() and not failed.path.exists()
    again = RunDir(tmp_path / "runs" / "again")
    again.point_latest()
    (good.path / "last.pt").unlink()
    good.path.rmdir()  # the run before is gone by then: no link to nothing
    again.discard_unsaved()
    assert not latest.is_symlink() and not latest.exists()


def test_latest_link_moves_and_never_replaces_a_real_folder(tmp_path):
    a, b = RunDir(tmp_path / "runs" / "a"), RunDir(tmp_path / "runs" / "b")
    a.point_latest()
    assert (tmp_path / "runs" / "latest").resolve() == a.path.resolve()
    b.point_latest()
    assert (tmp_path / "runs" / "latest").resolve() == b.path.resolve()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "latest").mkdir()
    said = RunDir(tmp_path / "other" / "c").point_latest()
    assert (tmp_path / "other" / "latest").is_dir() and not (tmp_path / "other" / "latest").is_symlink()
    assert "latest is a folder, not a link, so it was left as it is: --resume and export without a path read it" in said
    assert a.point_latest() is None  # a link is moved without a word


def test_refusals_and_cleanup(tmp_path):
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "last.pt").write_bytes(b"x")
    with pytest.raises(UsageError, match="already holds a run; continue it with --resume"):
        RunDir(tmp_path / "done")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "best.pt").write_bytes(b"my own")
    (tmp_path / "mine" / "notes.txt").write_text("kept")
    with pytest.raises(UsageError, match="already holds best.pt, which a run would overwrite; move them"):
        RunDir(tmp_path / "mine")
    (tmp_path / "mine" / "best.pt").unlink()
    RunDir(tmp_path / "mine").close()  # other files are no obstacle: a run writes none of them
    RunDir(tmp_path / "done", resuming=True).close()
    (tmp_path / "killed").mkdir()  # a run killed before its first checkpoint: each command says what to do
    (tmp_path / "killed" / "config.json").write_text("{}")
    with pytest.raises(UsageError, match="stopped before its first checkpoint .*delete the folder to start it again"):
        RunDir(tmp_path / "killed")
    with pytest.raises(UsageError, match="stopped before its first checkpoint\\); delete the folder and train it again"):
        resume_path(tmp_path / "killed")
    (tmp_path / "file").write_text("x")
    with pytest.raises(EngineError, match="cannot write to --out"):
        RunDir(tmp_path / "file" / "run")
    unused = RunDir(tmp_path / "a" / "b" / "c")
    unused.discard_if_unused()
    assert not (tmp_path / "a").exists()


def test_default_run_directories_are_unique(tmp_path):
    first = default_run_dir("cifar_cnn", "synthetic", root=tmp_path)
    first.mkdir()
    second = default_run_dir("cifar_cnn", "synthetic", root=tmp_path)
    assert second != first and second.name.startswith("cifar_cnn-synthetic-")


def test_the_progress_bar_shows_in_a_notebook_and_not_in_a_pipe(monkeypatch):
    import sys
    import types

    from engine.report import progress

    bar = progress(10, 1, quiet=False)  # pytest captures stdout: not a terminal
    assert bar.disable
    bar.close()
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))  # as inside a Jupyter kernel
    bar = progress(10, 1, quiet=False)
    assert not bar.disable
    bar.close()
    assert progress(10, 1, quiet=True).disable
