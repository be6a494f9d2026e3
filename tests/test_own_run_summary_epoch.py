"""`engine summary CHECKPOINT` names the epoch a checkpoint saved within an epoch holds (a stop at
--target-acc, a --save-every save), as engine eval and export name it: 0.5, not 0."""

from engine.cli import main
from tests.test_own_run_out_paths import TRAIN, images  # noqa: F401  the fixture


def test_summary_of_a_checkpoint_saved_within_an_epoch(images, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ENGINE_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main([*TRAIN, "--data", str(images), "--out", str(run), "--target-acc", "1",
                 "--batch-size", "3", "--eval-every", "0.5"]) == 0  # 4 steps an epoch: stops at 0.5
    assert "at epoch 0.5 (" in capsys.readouterr().out
    assert main(["summary", str(run / "last.pt")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "(lenet, epoch 0.5, 3 classes: cat, dog, owl)" in first, first
