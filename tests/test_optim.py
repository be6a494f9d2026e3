"""engine.optim: the schedules' shapes and the optimizers each config asks for."""

import pytest
import torch

from engine.config import Config
from engine.errors import UsageError
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


def test_adam_and_rmsprop_map_momentum_and_weight_decay():
    model = torch.nn.Linear(3, 2)
    adam = build_optimizer(Config(optimizer="adam", lr=1e-3, momentum=0.8, weight_decay=1e-4), model)
    assert type(adam) is torch.optim.Adam
    assert adam.param_groups[0]["betas"] == (0.8, 0.999) and adam.param_groups[0]["weight_decay"] == 1e-4
    rmsprop = build_optimizer(Config(optimizer="rmsprop", lr=1e-3, momentum=0.7, weight_decay=2e-4), model)
    assert type(rmsprop) is torch.optim.RMSprop
    group = rmsprop.param_groups[0]
    assert group["momentum"] == 0.7 and group["alpha"] == 0.99 and group["weight_decay"] == 2e-4


@pytest.mark.parametrize("name", ["sgd", "adamw", "adam", "rmsprop"])
def test_every_optimizer_steps_downhill_and_skips_frozen_parameters(name):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1))
    model[0].bias.requires_grad_(False)  # like a frozen whitening stem
    frozen = model[0].bias.clone()
    optimizer = build_optimizer(Config(optimizer=name, lr=1e-2, momentum=0.9), model)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert torch.equal(model[0].bias, frozen)
    assert len(optimizer.state_dict()["param_groups"][0]["params"]) == 4  # the frozen one is still listed


def test_unknown_optimizer_is_refused_by_the_config():
    with pytest.raises(UsageError, match="--optimizer must be one of sgd, adamw, adam, rmsprop"):
        Config(optimizer="lion")


def test_bn_lr_scale_gives_batchnorm_parameters_their_own_group():
    from engine.models import build_model
    from engine.optim import parameter_groups

    model = build_model("fast_cifar", (3, 32, 32), 10)
    norms = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    assert len(build_optimizer(Config(), model).param_groups) == 1  # the default: one group, as before
    optimizer = build_optimizer(Config(lr=0.4, weight_decay=1e-3, bn_lr_scale=64.0), model)
    rest, norm = optimizer.param_groups
    assert {id(p) for p in norm["params"]} == norms and not norms & {id(p) for p in rest["params"]}
    assert len(rest["params"]) + len(norm["params"]) == len(list(model.parameters()))
    assert norm["weight_decay"] == pytest.approx(1e-3 / 64) and rest["weight_decay"] == 1e-3
    set_lr(optimizer, 0.1)  # the schedule moves both groups, keeping their ratio
    assert rest["lr"] == 0.1 and norm["lr"] == pytest.approx(6.4)
    assert [g["lr_scale"] for g in parameter_groups(torch.nn.Linear(2, 2), 64.0)] == [1.0]  # nothing to scale


def test_a_batchnorm_bias_steps_bn_lr_scale_times_further():
    torch.manual_seed(0)
    steps = []
    for scale in (1.0, 8.0):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3), torch.nn.Flatten(), torch.nn.Linear(12, 1))
        optimizer = build_optimizer(Config(lr=0.01, momentum=0.0, weight_decay=0.0, bn_lr_scale=scale), model)
        set_lr(optimizer, 0.01)
        before = model[1].bias.detach().clone(), model[0].weight.detach().clone()
        model(torch.randn(4, 2, 2, 2, generator=torch.Generator().manual_seed(1))).sum().backward()
        optimizer.step()
        steps.append((model[1].bias.detach() - before[0], model[0].weight.detach() - before[1]))
    torch.testing.assert_close(steps[1][0], 8 * steps[0][0])  # the BatchNorm bias: 8x the step
    torch.testing.assert_close(steps[1][1], steps[0][1])  # a conv weight: unchanged
