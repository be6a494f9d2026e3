"""engine.optim: the schedules' shapes and the optimizers each config asks for."""

import pytest
import torch

from engine.config import Config
from engine.optim import build_optimizer, lr_at, set_lr


def test_onecycle_rises_to_the_peak_then_falls_to_zero():
    cfg = Config(lr=0.1, schedule="onecycle")
    lrs = [lr_at(cfg, s, 100) for s in range(101)]
    assert lrs[0] == pytest.approx(0.01)
    assert max(lrs) == pytest.approx(0.1) and lrs.index(max(lrs)) == 20
    assert all(a <= b for a, b in zip(lrs[:20], lrs[1:21]))
    assert all(a >= b for a, b in zip(lrs[20:], lrs[21:]))
    assert lrs[100] == 0.0


def test_cosine_and_constant():
    cosine = Config(lr=0.2, schedule="cosine")
    assert lr_at(cosine, 0, 10) == pytest.approx(0.2)
    assert lr_at(cosine, 5, 10) == pytest.approx(0.1)
    assert lr_at(cosine, 10, 10) == pytest.approx(0.0, abs=1e-12)
    assert {lr_at(Config(lr=0.3, schedule="constant"), s, 10) for s in range(10)} == {0.3}


def test_optimizers():
    model = torch.nn.Linear(3, 2)
    sgd = build_optimizer(Config(momentum=0.8, weight_decay=1e-3), model)
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert group["nesterov"] and group["momentum"] == 0.8 and group["weight_decay"] == 1e-3
    adamw = build_optimizer(Config(optimizer="adamw", momentum=0.85), model)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["betas"] == (0.85, 0.999)
    set_lr(adamw, 0.123)
    assert adamw.param_groups[0]["lr"] == 0.123
