"""`engine train --resume RUN --eval-every 1` (or `--test-split 10%`), a default given by its value,
was refused as "--eval-every 1.0 differs from its --eval-every unset", though unset means exactly
that; now the default given by its value resumes, and a real change is still one line."""

import numpy as np
import pytest
from PIL import Image

from engine.config import Config
from engine.errors import UsageError
from engine.resume import resume_config
from engine.train import train


def test_eval_every_1_is_the_unset_default_of_a_run_without_a_target(tiny_run):
    run, _ = tiny_run
    cfg, checkpoint = resume_config(run, {"eval_every": 1.0}, say=lambda *_: None)
    assert cfg.out == str(run.resolve()) and checkpoint.epochs_done == 1
    with pytest.raises(UsageError, match=r"--eval-every 0.5 differs from its --eval-every unset"):
        resume_config(run, {"eval_every": 0.5}, say=lambda *_: None)


@pytest.mark.slow
def test_the_default_test_split_given_by_its_value_resumes_and_another_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "imgs" / name / f"{i}.png")
    out = tmp_path / "run"
    train(Config(data=str(tmp_path / "imgs"), model="mlp", epochs=1, batch_size=8, crop_padding=0, amp=False, device="cpu",
                 cache_dir=str(tmp_path / "cache"), quiet=True, out=str(out), target_acc=99),
          log=lambda *_: None)
    cfg, _ = resume_config(out, {"test_split": "10%"}, say=lambda *_: None)
    assert cfg.test_split in (None, "10%")
    with pytest.raises(UsageError, match="--test-split 20% differs from its --test-split unset"):
        resume_config(out, {"test_split": "20%"}, say=lambda *_: None)
    with pytest.raises(UsageError, match=r"--eval-every 1.0 differs from its --eval-every unset"):
        resume_config(out, {"eval_every": 1.0}, say=lambda *_: None)  # with --target-acc, unset is not 1


def test_a_moved_run_refusing_another_out_names_where_the_run_is(tiny_run, tmp_path):
    """The refusal named the folder the run's config recorded (where it trained), not the run resumed."""
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(tiny_run[0], moved, ignore=shutil.ignore_patterns(".engine.lock"))
    with pytest.raises(UsageError, match=f"--out elsewhere differs from its --out {moved.resolve()} "):
        resume_config(moved, {"out": "elsewhere"}, say=lambda *_: None)
