"""--triton fuses a Conv2d -> ReLU -> MaxPool2d(2) run of an nn.Sequential; a forward that iterates the
Sequential and keeps a layer's map (a multi-scale head tapping each ReLU, VGG perceptual-loss style) was
fused all the same, and computed another function without a word (0.24 off in the logits): a run whose
conv or ReLU output something else reads is left alone."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import UsageError
from engine.fusion import find_runs, fuse
from engine.runtime import use_triton


def _features():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))


class Taps(nn.Module):
    def __init__(self, at=(1, 4)):
        super().__init__()
        self.features, self.at = _features(), at
        self.head = nn.Linear(24, 3)

    def forward(self, x):
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.at:
                taps.append(F.adaptive_avg_pool2d(x, 1).flatten(1))
        return self.head(torch.cat(taps, 1))


class Whole(nn.Module):
    def __init__(self):
        super().__init__()
        self.features, self.head = _features(), nn.Linear(16, 3)

    def forward(self, x):
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def test_a_forward_tapping_each_relu_map_is_not_fused_and_triton_refuses_it_in_one_line():
    model = Taps()
    assert find_runs(model) == []
    with pytest.raises(UsageError, match="Taps has no Conv2d -> ReLU -> MaxPool2d"):
        use_triton(model, torch.device("cpu"))


def test_only_the_run_whose_relu_map_is_read_is_left_alone_and_the_function_is_kept():
    torch.manual_seed(0)
    model, x = Taps(at=(1, 5)).eval(), torch.randn(2, 3, 20, 36)  # the first ReLU's map, the last pool's
    expected = model(x)
    fused = copy.deepcopy(model)
    assert fuse(fused) == 1 and type(fused.features[3]).__name__ == "FusedConvReluPool"
    assert type(fused.features[0]) is nn.Conv2d
    assert torch.allclose(fused(x), expected, atol=1e-6)


def test_sequentials_called_whole_and_a_shared_relu_still_fuse():
    relu = nn.ReLU()
    shared = nn.Sequential(nn.Conv2d(3, 4, 3), relu, nn.MaxPool2d(2), nn.Conv2d(4, 4, 3), relu, nn.MaxPool2d(2))
    assert len(find_runs(Whole())) == 2 and len(find_runs(shared)) == 2
    torch.manual_seed(0)
    model, x = Whole().eval(), torch.randn(2, 3, 21, 35)
    expected = model(x)
    assert fuse(model) == 2 and torch.allclose(model(x), expected, atol=1e-6)
