"""--bn-lr-scale X on a user model with no BatchNorm parameter that trains (GroupNorm and LayerNorm only, or
no norm at all, or its BatchNorm frozen) changed nothing and said nothing: the run trained every parameter at
--lr as if the flag were not given. Now one line says so, as --flip and --tta do on data they leave alone;
under --optimizer muon every bias is scaled too, so a model with biases gets no such line."""

import pytest
from torch import nn

from engine.config import Config
from engine.optim import bn_lr_scale_note


class GroupNormNet(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.LayerNorm(8), nn.Linear(8, 10))


group_norm_net = GroupNormNet


def batch_norm_net(frozen=False):
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 10))
    net[1].requires_grad_(not frozen)
    return net


@pytest.mark.parametrize("make", [group_norm_net, lambda: batch_norm_net(frozen=True), lambda: nn.Sequential(
    nn.Flatten(), nn.Linear(12, 10, bias=False))])
def test_a_scale_with_nothing_to_scale_is_said(make):
    line = bn_lr_scale_note(Config(bn_lr_scale=64), make())
    assert line is not None and line.startswith("--bn-lr-scale 64: ") and "\n" not in line
    assert "--lr" in line


def test_no_line_where_the_scale_applies_or_is_one():
    assert bn_lr_scale_note(Config(bn_lr_scale=64), batch_norm_net()) is None
    assert bn_lr_scale_note(Config(bn_lr_scale=64, optimizer="muon"), group_norm_net()) is None  # its biases
    assert bn_lr_scale_note(Config(), group_norm_net()) is None
    line = bn_lr_scale_note(Config(bn_lr_scale=64, optimizer="muon"), nn.Sequential(nn.Flatten(), nn.Linear(12, 10, bias=False)))
    assert line is not None and "bias" in line


@pytest.mark.slow
def test_train_says_it(tmp_path):
    from engine.train import train

    lines = []
    cfg = Config(data="synthetic", epochs=1, batch_size=4, limit_train=8, limit_test=4, out=str(tmp_path / "run"),
                 device="cpu", data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"),
                 bn_lr_scale=16, tta=0, quiet=False, amp=False)
    train(cfg, model=group_norm_net(), log=lines.append)
    said = [line for line in map(str, lines) if line.startswith("--bn-lr-scale 16: ")]
    assert len(said) == 1, lines
