"""A user model's `init_from_data(images)` method is a hook the engine calls on a fresh run (as fast_cifar's
whitening stem), but no doc said so and the line named it 'patch whitening' whatever the method did. models.md
now documents the hook; the line names the user's method; --init-from and --resume do not call it."""

import pytest
from PIL import Image

from engine.config import Config
from engine.train import train

pytestmark = pytest.mark.slow  # whole (tiny) trainings

NET = r"""
import torch, torch.nn as nn
class Net(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.c = nn.Conv2d(in_channels, 4, 1)
        self.h = nn.Linear(4, num_classes)
    def forward(self, x):
        return self.h(self.c(x).mean((2, 3)))
    def init_from_data(self, images):
        with open(__file__ + ".calls", "a") as f:
            f.write(f"{tuple(images.shape)} {images.dtype}\n")
        with torch.no_grad():
            self.c.bias.fill_(7.0)
"""


def test_a_user_models_init_from_data_is_called_and_named(tmp_path):
    for c in range(2):
        folder = tmp_path / "photos" / f"c{c}"
        folder.mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (10, 6), (40 + 100 * c + i, 20, 60)).save(folder / f"{i}.png")
    (tmp_path / "hooknet.py").write_text(NET)
    lines = []
    cfg = Config(model=f"{tmp_path / 'hooknet.py'}:Net", data=str(tmp_path / "photos"), image_size="6x10", epochs=1,
                 batch_size=4, crop_padding=0, amp=False, device="cpu", out=str(tmp_path / "run"),
                 cache_dir=str(tmp_path / "cache"), test_split="34%", lr=1e-9)
    train(cfg, log=lambda line, *_: lines.append(str(line)))
    assert "Initialised Net from 8 training images (Net.init_from_data)" in lines
    import torch

    assert (tmp_path / "hooknet.py.calls").read_text() == "(8, 3, 6, 10) torch.float32\n"  # once, fresh
    weights = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]
    assert torch.allclose(weights["c.bias"], torch.full((4,), 7.0), atol=1e-3)  # lr 1e-9: as the hook set it
