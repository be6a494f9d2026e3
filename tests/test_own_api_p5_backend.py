"""A notebook calling train() keeps its matplotlib backend and its open figures: the run's
pictures (curves.png, confusion.png) are drawn on Agg figures of their own, not through pyplot
(which once switched the caller's backend to Agg, so a notebook's plots no longer showed)."""

import matplotlib
import pytest
from matplotlib import pyplot as plt

from engine.config import Config
from engine.train import train


@pytest.fixture
def svg_backend():
    before = matplotlib.get_backend()
    plt.close("all")
    matplotlib.use("svg")  # stands for a notebook's inline backend: any but Agg
    yield
    plt.close("all")
    matplotlib.use(before)


@pytest.mark.slow
def test_train_keeps_the_callers_backend_and_figures(tmp_path, svg_backend):
    mine = plt.figure()
    cfg = Config(data="synthetic", limit_train=32, limit_test=32, batch_size=16, epochs=1, amp=False, device="cpu",
                 quiet=True, out=str(tmp_path / "run"))
    train(cfg, log=lambda *_: None)
    assert matplotlib.get_backend() == "svg"
    assert plt.get_fignums() == [mine.number]
    for name in ("curves.png", "confusion.png"):
        assert (tmp_path / "run" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
