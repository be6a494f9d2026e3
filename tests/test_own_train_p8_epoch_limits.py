"""A user model's `epoch_limited()` (docs/models.md: {parameter: epochs}, trained for its first epochs only)
that returns something else: a name for a key, a list, a NaN or negative count, a tensor that is not one of
the model's parameters. Each was a traceback from the optimizer's construction (TypeError 'optimizer can only
optimize Tensors', AttributeError 'list' has no 'items', ValueError 'cannot convert float NaN to integer') or
went unsaid; now each is one line naming the method, before the run is left behind."""

import math

import pytest
import torch
from torch import nn

from engine.config import Config
from engine.errors import UsageError
from engine.optim import build_optimizer, epoch_limits, stop_finished


class Base(nn.Module):
    def __init__(self, limits=None):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 10)
        self.register_buffer("scale", torch.ones(4))
        self.limits = limits

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)) * self.scale)

    def epoch_limited(self):
        return self.limits(self)


BAD = {
    "a name": (lambda m: {"conv.bias": 1}, "'conv.bias'"),
    "a list": (lambda m: [m.conv.bias], "list"),
    "NaN epochs": (lambda m: {m.conv.bias: math.nan}, "nan"),
    "negative epochs": (lambda m: {m.conv.bias: -1}, "-1"),
    "epochs as text": (lambda m: {m.conv.bias: "2"}, "'2'"),
    "epochs as True": (lambda m: {m.conv.bias: True}, "True"),
    "a buffer": (lambda m: {m.scale: 1}, "not one of"),
    "a foreign parameter": (lambda m: {nn.Parameter(torch.zeros(3)): 1}, "not one of"),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
def test_a_bad_epoch_limited_is_one_line(case, optimizer):
    limits, said = BAD[case]
    model = Base(limits)
    with pytest.raises(UsageError) as raised:
        build_optimizer(Config(optimizer=optimizer), model)
    line = str(raised.value)
    assert "\n" not in line and "Base.epoch_limited()" in line and said in line, line
    with pytest.raises(UsageError):
        stop_finished(model, 1)


def test_good_epoch_limits_train_and_stop():
    model = Base(lambda m: {m.conv.bias: 1.5, m.head.weight: 0})
    assert epoch_limits(model) == {model.conv.bias: 1.5, model.head.weight: 0}
    optimizer = build_optimizer(Config(), model)
    assert sorted(g.get("epochs") is not None for g in optimizer.param_groups) == [False, True, True]
    assert stop_finished(model, 0) and not model.head.weight.requires_grad and model.conv.bias.requires_grad
    assert stop_finished(model, 2) and not model.conv.bias.requires_grad
    assert epoch_limits(nn.Linear(2, 2)) == {}


@pytest.mark.slow
def test_a_bad_epoch_limited_leaves_no_run(tmp_path):
    from engine.train import train

    out = tmp_path / "run"
    cfg = Config(data="synthetic", epochs=1, batch_size=4, limit_train=8, limit_test=4, out=str(out), quiet=True,
                 device="cpu", data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(UsageError, match="epoch_limited"):
        train(cfg, model=Base(lambda m: {"conv.bias": 1}), log=lambda *a: None)
    assert not out.exists() or not any(out.iterdir())
