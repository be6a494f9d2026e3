"""--tta 2 on images one pixel wide or high (--image-size 1x8): its one-pixel shift pads by reflection, which
torch refuses for a side of 1, so the run trained its first epoch and then stopped with a RuntimeError traceback
at the evaluation, and engine eval --tta 2 did the same. Now it is one line before any work, from train() and
evaluate_checkpoint() alike; --tta 1 (the mirror alone) still runs on such images."""

import pytest
import torch
from PIL import Image

from engine.config import Config
from engine.errors import UsageError
from engine.evaluate import evaluate_checkpoint
from engine.train import train

NET = """
import torch.nn as nn
class Net(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.c = nn.Conv2d(in_channels, 4, 1)
        self.h = nn.Linear(4, num_classes)
    def forward(self, x):
        return self.h(self.c(x).mean((2, 3)))
"""


@pytest.fixture
def setup(tmp_path):
    for c in range(2):
        folder = tmp_path / "photos" / f"c{c}"
        folder.mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (8, 6), (40 + 100 * c + i, 20, 60)).save(folder / f"{i}.png")
    (tmp_path / "nets.py").write_text(NET)
    return tmp_path


def config(tmp, size, tta, out="run"):
    return Config(model=f"{tmp / 'nets.py'}:Net", data=str(tmp / "photos"), image_size=size, epochs=1, batch_size=4,
                  crop_padding=0, tta=tta, amp=False, device="cpu", quiet=True, out=str(tmp / out),
                  cache_dir=str(tmp / "cache"), test_split="34%")


@pytest.mark.parametrize("size", ["1x8", "8x1"])
def test_tta2_on_one_pixel_sides_is_one_line_before_any_work(setup, size):
    with pytest.raises(UsageError, match=r"--tta 2 .* at least 2 pixels a side, not " + size + ".*--tta 1"):
        train(config(setup, size, 2), log=None)
    assert not (setup / "run").exists()  # nothing trained, nothing left claimed as a run


@pytest.mark.slow
def test_eval_tta2_of_a_one_pixel_run_is_one_line(setup):
    train(config(setup, "1x8", 1), log=None)  # the mirror alone runs on such images
    best = setup / "run" / "best.pt"
    assert torch.load(best, weights_only=False)["metrics"][-1]["tta"] == 1
    with pytest.raises(UsageError, match="--tta 2 .* not 1x8"):
        evaluate_checkpoint(best, {"tta": 2}, log=None, model=f"{setup / 'nets.py'}:Net")
    assert evaluate_checkpoint(best, {"tta": 1}, log=None, model=f"{setup / 'nets.py'}:Net")["tta"] == 1
