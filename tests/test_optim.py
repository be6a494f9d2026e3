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


def test_an_epoch_limited_parameter_has_its_own_group_and_stops_at_its_epoch():
    """fast_cifar94's whitening bias: its own group after the BatchNorm one, lr 0 from epoch 3 on
    (a function of the step alone), every other group untouched by the limit."""
    from engine.models import build_model

    model = build_model("fast_cifar94", (3, 32, 32), 10)
    optimizer = build_optimizer(Config(lr=0.4, weight_decay=1e-3, bn_lr_scale=64.0), model)
    rest, norm, bias = optimizer.param_groups
    assert bias["params"] == [model.stem[0].bias] and bias["epochs"] == 3 and bias["weight_decay"] == 1e-3
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    set_lr(optimizer, 0.2, epoch=2.999)
    assert (rest["lr"], norm["lr"], bias["lr"]) == (0.2, pytest.approx(12.8), 0.2)
    set_lr(optimizer, 0.2, epoch=3.0)
    assert (rest["lr"], norm["lr"], bias["lr"]) == (0.2, pytest.approx(12.8), 0.0)
    set_lr(optimizer, 0.2)  # without an epoch nothing stops (callers outside the training loop)
    assert bias["lr"] == 0.2
    assert len(build_optimizer(Config(), model).param_groups) == 2  # bn_lr_scale 1: the rest and the bias


def test_a_finished_parameter_stops_taking_gradients_and_the_rest_get_the_same():
    """stop_finished turns the whitening bias's gradient off from epoch 3 (its limit) on, never back on,
    and the other parameters' gradients are bit for bit what they were with it on."""
    from engine.models import build_model
    from engine.optim import stop_finished

    torch.manual_seed(0)
    model = build_model("fast_cifar94", (3, 32, 32), 10)
    model.stem[0].weight.requires_grad_(False)  # as the whitening init leaves it
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])

    def grads():
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        return {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()}

    before = grads()
    assert before["stem.0.bias"] is not None
    assert stop_finished(model, 2) is False and model.stem[0].bias.requires_grad  # epoch 3 (0-based 2) still trains it
    assert stop_finished(model, 3) is True and not model.stem[0].bias.requires_grad
    assert stop_finished(model, 4) is False  # already off
    after = grads()
    assert after["stem.0.bias"] is None
    for name, grad in before.items():
        if name != "stem.0.bias" and grad is not None:
            assert torch.equal(grad, after[name]), name
    plain = build_model("fast_cifar", (3, 32, 32), 10)  # no epoch-limited parameters: nothing changes
    trains = [p.requires_grad for p in plain.parameters()]
    assert stop_finished(plain, 10) is False and [p.requires_grad for p in plain.parameters()] == trains


def test_a_parameter_frozen_otherwise_is_never_turned_back_on():
    from engine.models import build_model
    from engine.optim import stop_finished

    model = build_model("fast_cifar94", (3, 32, 32), 10)
    model.stem[0].bias.requires_grad_(False)  # --freeze stem
    assert stop_finished(model, 0) is False and not model.stem[0].bias.requires_grad


@pytest.mark.parametrize("name", ["sgd", "adamw", "adam", "rmsprop"])
def test_a_stopped_group_stays_bit_for_bit_while_the_rest_trains(name):
    """lr 0 freezes a parameter exactly under every optimizer, momentum and weight decay included."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)

        def forward(self, x):
            return self.b(torch.tanh(self.a(x)))

        def epoch_limited(self):
            return {self.a.bias: 1}

    torch.manual_seed(0)
    model = Net()
    optimizer = build_optimizer(Config(optimizer=name, lr=0.05, momentum=0.9, weight_decay=1e-2), model)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    initial = model.a.bias.detach().clone()
    for step in range(6):  # 3 steps an epoch: steps 0-2 train the bias, 3-5 do not
        if step == 3:
            stopped, weight = model.a.bias.detach().clone(), model.a.weight.detach().clone()
        set_lr(optimizer, 0.05, epoch=step / 3)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    assert not torch.equal(stopped, initial)  # it trained in epoch 0
    assert torch.equal(model.a.bias, stopped)  # and not since, though its gradient was not None
    assert model.a.bias.grad is not None and not torch.equal(model.a.weight, weight)
