"""--eval-every finer than one training step evaluates after every step: the run says so (from
Python as from the command line), and the evaluations counted for the compile plan are the ones made."""

import pytest

from engine.config import Config
from engine.target import Watch
from engine.train import train


def test_the_evaluations_counted_are_those_made_at_most_one_a_step():
    assert Watch(None, 0.01, 4, 2).evaluations(0) == 8  # every step of 4, two epochs (was 200)
    assert Watch(80, None, 4, 2).evaluations(0) == 8  # the target's 1/8 then 1/4, at most each step (was 2)
    assert Watch(80, None, 100, 2).evaluations(0) == 8 + 4
    assert Watch(None, 0.25, 4, 3).evaluations(1) == 8


def test_a_cadence_finer_than_a_step_is_named():
    assert Watch(None, 0.01, 4, 1).note(0.01, 4).startswith("--eval-every 0.01: an epoch here is 4 steps")
    assert Watch(None, 0.25, 4, 1).note(0.25, 4) is None  # exactly a step
    assert Watch(None, 0.5, 4, 1).note(0.5, 4) is None
    assert Watch(None, 3, 4, 1).note(3, 4) is None
    assert Watch(80, None, 4, 1).note(None, 4) is None  # the target's own default is not the user's


@pytest.mark.slow
def test_a_python_run_says_it_and_evaluates_each_step(tmp_path):
    lines = []
    cfg = Config(data="synthetic", limit_train=64, limit_test=32, batch_size=16, epochs=1, amp=False, device="cpu",
                 eval_every=0.01, out=str(tmp_path / "run"))
    _, metrics = train(cfg, log=lines.append)
    said = [line for line in lines if line.startswith("--eval-every 0.01")]
    assert said and "4 steps" in said[0] and "after every step" in said[0]
    assert [m["epoch"] for m in metrics] == [0.25, 0.5, 0.75, 1]
