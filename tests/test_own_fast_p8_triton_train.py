"""engine train --triton hands the run's image shape to the fusing check (engine.fusion_probe), so a user
model torch.fx cannot trace has its runs checked on a probe batch: one whose forward taps a ReLU map is
refused in one line before any work, one that calls its Sequential whole is fused and trains."""

import pytest
from PIL import Image

from engine.config import Config
from engine.errors import UsageError
from engine.train import train
from tests.conftest import requires_triton

NETS = r"""
import torch, torch.nn as nn, torch.nn.functional as F
class Tapping(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(8, num_classes)
    def forward(self, x):
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == 1:
                taps.append(x.mean((2, 3)))
        if x.sum() > 0:  # control flow on a tensor's value: no torch.fx trace
            x = x * 1
        return self.head(torch.cat(taps + [x.mean((2, 3))], 1))
class Whole(Tapping):
    def forward(self, x):
        x = self.features(x)
        if x.sum() > 1e9:
            x = x / 2
        return self.head(torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1))
"""


def _cfg(tmp_path, name):
    for c in range(2):
        folder = tmp_path / "photos" / f"c{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(4):
            Image.new("RGB", (6, 6), (40 + 100 * c + 10 * i, 20, 60)).save(folder / f"{i}.png")
    (tmp_path / "nets.py").write_text(NETS)
    return Config(model=f"{tmp_path / 'nets.py'}:{name}", data=str(tmp_path / "photos"), epochs=1, batch_size=4,
                  crop_padding=0, amp=False, device="cpu", triton=True, out=str(tmp_path / "run"),
                  cache_dir=str(tmp_path / "cache"), test_split="25%")


def test_a_tapping_untraceable_model_is_refused_in_one_line_and_leaves_no_run(tmp_path):
    with pytest.raises(UsageError) as error:
        train(_cfg(tmp_path, "Tapping"), log=lambda *_: None)
    assert "changed its output on a probe batch" in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


@requires_triton
@pytest.mark.slow
def test_an_untraceable_model_calling_its_sequential_whole_is_fused_and_trains(tmp_path):
    lines = []
    train(_cfg(tmp_path, "Whole"), log=lambda line, *_: lines.append(str(line)))
    assert any(line.startswith("Model: Whole") and "Triton conv+ReLU+pool on 1 block" in line for line in lines)
    assert (tmp_path / "run" / "best.pt").exists()
