"""--muon-lr / --muon-momentum under --optimizer muon, on a model with no trainable conv filter (an MLP,
its filters frozen), changed nothing and said nothing but that every parameter takes SGD: one line
names the flags that change nothing, as --bn-lr-scale's does."""

import pytest
from torch import nn

from engine.config import Config
from engine.optim import muon_flags_note


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 10))


def conv_net(frozen=False):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    net[0].requires_grad_(not frozen)
    return net


@pytest.mark.parametrize("make", [mlp, lambda: conv_net(frozen=True)])
def test_muon_flags_with_no_filter_are_said(make):
    line = muon_flags_note(Config(optimizer="muon", muon_lr=0.1, muon_momentum=0.9), make())
    assert line.startswith("--muon-lr and --muon-momentum: ") and "change nothing" in line and "\n" not in line
    assert muon_flags_note(Config(optimizer="muon", muon_momentum=0.9), make()).startswith("--muon-momentum: ")


def test_no_line_where_they_apply_or_are_not_given():
    assert muon_flags_note(Config(optimizer="muon", muon_lr=0.1), conv_net()) is None
    assert muon_flags_note(Config(optimizer="muon"), mlp()) is None


@pytest.mark.slow
def test_train_says_it(tmp_path):
    from engine.train import train
    from tests.test_own_loose_p9_data_line import folder

    lines = []
    cfg = Config(data=str(folder(tmp_path / "set")), epochs=1, batch_size=4, out=str(tmp_path / "run"), device="cpu",
                 cache_dir=str(tmp_path / "cache"), model="mlp", optimizer="muon", muon_lr=0.1, tta=0, quiet=False,
                 crop_padding=0, amp=False)
    train(cfg, log=lines.append)
    assert sum(str(line).startswith("--muon-lr: ") for line in lines) == 1, lines
