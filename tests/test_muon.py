"""engine.muon and `--optimizer muon`: the orthogonalised step, the groups, exact resume."""

import pytest
import torch
from torch import nn

from engine.checkpoint import load
from engine.config import Config
from engine.errors import UsageError
from engine.muon import Muon, orthogonalize
from engine.optim import build_optimizer, lr_at, set_lr


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.GELU(),
                         nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.GELU(),
                         nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(16, 4, bias=False))


def step(model, optimizer, seed):
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 3, 8, 8, generator=generator), torch.randint(0, 4, (16,), generator=generator)
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("shape", [(64, 216), (256, 2304), (300, 40)])
def test_orthogonalize_keeps_the_singular_vectors_and_moves_the_large_values_near_one(shape, dtype, atol):
    generator, rank = torch.Generator().manual_seed(1), min(shape)
    u = torch.linalg.qr(torch.randn(shape[0], rank, generator=generator)).Q
    vh = torch.linalg.qr(torch.randn(shape[1], rank, generator=generator)).Q.T
    s = torch.logspace(1, -1, rank)  # singular values spanning 100x
    g = u @ torch.diag(s) @ vh
    out = orthogonalize(g, dtype=dtype)
    assert out.shape == g.shape and out.dtype == torch.float32
    # each of g's singular directions is mapped onto itself with a positive gain, no mixing
    gains = torch.diagonal(u.T @ out @ vh.T)
    assert torch.allclose(u.T @ out @ vh.T, torch.diag(gains), atol=atol)
    assert (gains > 0).all() and gains.max() < 1.25
    assert (gains[s >= s.max() / 10] > 0.5).all()  # g's top decade (3 steps: far below it lags behind)
    assert gains.max() / gains.min() < (s.max() / s.min()) / 5  # the spread shrinks (3 steps: not to 1)


def airbench_reference(weights, grads, buffers, lr, momentum):
    """airbench94_muon's Muon step as it is written there (KellerJordan/cifar10-airbench), float32."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    for p, g, buf in zip(weights, grads, buffers):
        buf.mul_(momentum).add_(g)
        g = g.add(buf, alpha=momentum)
        p.mul_(len(p) ** 0.5 / p.norm())
        x = g.reshape(len(g), -1)
        x = x / (x.norm() + 1e-7)
        if x.size(0) > x.size(1):
            x = x.T
        for _ in range(3):
            gram = x @ x.T
            x = a * x + (b * gram + c * gram @ gram) @ x
        if g.size(0) > g.reshape(len(g), -1).size(1):
            x = x.T
        p.add_(x.view(g.shape), alpha=-lr)


def test_the_filters_step_as_airbench94_muon_and_the_rest_as_nesterov_sgd():
    model = small_net()
    cfg = Config(optimizer="muon", lr=0.3, momentum=0.85, weight_decay=1e-3, muon_lr=0.2, muon_momentum=0.6)
    optimizer = build_optimizer(cfg, model)
    filters = [model[0].weight, model[3].weight]
    rest = [p for p in model.parameters() if p.dim() < 3]
    reference_filters = [p.detach().clone() for p in filters]
    reference_rest = [p.detach().clone().requires_grad_() for p in rest]
    sgd = torch.optim.SGD(reference_rest, lr=0.3, momentum=0.85, nesterov=True, weight_decay=1e-3)
    buffers = [torch.zeros_like(p) for p in filters]
    for seed in range(3):
        set_lr(optimizer, 0.3)
        step(model, optimizer, seed)
        airbench_reference(reference_filters, [p.grad for p in filters], buffers, 0.2, 0.6)
        for mine, theirs in zip(rest, reference_rest):
            theirs.grad = mine.grad.clone()
        sgd.step()
        for mine, theirs in zip(filters, reference_filters):
            torch.testing.assert_close(mine.detach(), theirs, rtol=1e-5, atol=1e-6)
            theirs.copy_(mine.detach())  # the next step's gradient comes from the model's own weights
        for mine, theirs in zip(rest, reference_rest):
            assert torch.equal(mine.detach(), theirs.detach())
    assert all(p.norm().item() == pytest.approx(len(p) ** 0.5, rel=0.3) for p in filters)


def test_muon_groups_carry_the_schedule_the_bn_scale_and_frozen_filters():
    model = small_net()
    model[0].weight.requires_grad_(False)  # a frozen stem
    frozen = model[0].weight.detach().clone()
    optimizer = build_optimizer(Config(optimizer="muon", lr=0.5, muon_lr=0.25, bn_lr_scale=64.0), model)
    assert isinstance(optimizer, Muon)
    kinds = [(g["orthogonalize"], len(g["params"])) for g in optimizer.param_groups]
    assert kinds == [(False, 1), (True, 2), (False, 4)]  # the head; the two filters; the BatchNorm parameters
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    set_lr(optimizer, 0.1)  # a fifth of the peak: every group follows
    head, filters, norms = optimizer.param_groups
    assert (head["lr"], norms["lr"]) == (pytest.approx(0.1), pytest.approx(6.4))
    assert filters["lr"] == pytest.approx(0.05) and filters["momentum"] == 0.6 and filters["weight_decay"] == 0
    set_lr(optimizer, 0.02)
    losses = [step(model, optimizer, seed % 2) for seed in range(30)]
    assert losses[-1] < losses[0] / 2
    assert torch.equal(model[0].weight, frozen)


@pytest.mark.parametrize("optimizer, bias_scale", [("muon", 64.0), ("sgd", 1.0)])
def test_under_muon_every_bias_trains_at_the_batchnorm_rate(optimizer, bias_scale):
    """airbench94_muon trains its whitening bias at the BatchNorm biases' rate, airbench94 at the base rate."""
    from engine.models import build_model

    model = build_model("fast_cifar94", (3, 32, 32), 10)
    optimizer = build_optimizer(Config(optimizer=optimizer, lr=0.5, weight_decay=1e-3, bn_lr_scale=64.0), model)
    stem_bias = next(g for g in optimizer.param_groups if [id(p) for p in g["params"]] == [id(model.stem[0].bias)])
    assert stem_bias["epochs"] == 3 and stem_bias["lr_scale"] == bias_scale
    assert stem_bias.get("weight_decay", 1e-3) == pytest.approx(1e-3 / bias_scale)
    norms = next(g for g in optimizer.param_groups if g["lr_scale"] == 64.0 and "epochs" not in g)
    assert {id(p) for p in norms["params"]} == {id(p) for p in model.parameters() if p.dim() == 1} - {id(model.stem[0].bias)}


def test_a_stopped_filter_group_stays_bit_for_bit():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 4, 3), nn.Linear(4, 4)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).amax((2, 3)))

        def epoch_limited(self):
            return {self.conv.weight: 1}

    torch.manual_seed(0)
    model = Net()
    optimizer = build_optimizer(Config(optimizer="muon", lr=0.05, momentum=0.9), model)
    for s in range(6):  # 3 steps an epoch: the filter trains in steps 0-2 only
        if s == 3:
            stopped = model.conv.weight.detach().clone()
        set_lr(optimizer, 0.05, epoch=s / 3)
        step(model, optimizer, s)
    assert torch.equal(model.conv.weight, stopped) and model.conv.weight.grad is not None


def test_a_restored_state_continues_bit_for_bit(tmp_path):
    model = small_net()
    optimizer = build_optimizer(Config(optimizer="muon", lr=0.2), model)
    for s in range(3):
        step(model, optimizer, s)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "state.pt")
    for s in range(3, 5):
        step(model, optimizer, s)
    saved = torch.load(tmp_path / "state.pt", weights_only=True)
    again = small_net()
    again.load_state_dict(saved["model"])
    restored = build_optimizer(Config(optimizer="muon", lr=0.2), again)
    restored.load_state_dict(saved["optimizer"])
    for s in range(3, 5):
        step(again, restored, s)
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


@pytest.mark.parametrize("amp, dtype", [(False, torch.float32), (True, torch.bfloat16)])
def test_a_bf16_run_orthogonalises_in_bf16_and_an_fp32_run_in_fp32(tmp_path, amp, dtype):
    from engine.session import open_session

    cfg = Config(model="fast_cifar", optimizer="muon", epochs=1, limit_train=64, limit_test=32, batch_size=32,
                 amp=amp, amp_dtype="bf16", device="cpu", out=str(tmp_path / "run"))
    said = []
    session = open_session(cfg, say=said.append)
    assert session.optimizer.matmul_dtype == dtype
    line = next(line for line in said if line.startswith("Optimizer: Muon for "))
    assert ("orthogonalised in bf16" in line) == amp


def test_a_bf16_step_is_airbench94_muons_within_bf16s_precision():
    model = small_net()
    optimizer = build_optimizer(Config(optimizer="muon", lr=0.3, muon_lr=0.2), model, torch.bfloat16)
    set_lr(optimizer, 0.3)
    filters = [p for p in model.parameters() if p.dim() == 4]
    before = [p.detach().clone() for p in filters]
    step(model, optimizer, seed=0)
    reference = [p.clone() for p in before]
    airbench_reference(reference, [p.grad for p in filters], [torch.zeros_like(p) for p in filters], lr=0.2, momentum=0.6)
    for p, theirs, start in zip(filters, reference, before):
        rescaled = start * len(start) ** 0.5 / start.norm()
        error = (p.detach() - theirs).norm() / (theirs - rescaled).norm()  # relative to the step itself
        assert error < 3e-2, error  # bf16 products keep about 3 significant digits


@pytest.mark.parametrize("model", ["cifar_cnn", "fast_cifar"])
def test_a_net_with_and_without_batchnorm_learns_the_synthetic_set_under_muon(tmp_path, model):
    """cifar_cnn's convs have biases and no BatchNorm, so the filters' fixed norm changes its function;
    it learns all the same. One epoch of 1,024 images, well above chance (10%)."""
    from engine.train import train

    cfg = Config(model=model, optimizer="muon", epochs=1, limit_train=1024, limit_test=256, batch_size=32, lr=0.05,
                 amp=False, device="cpu", out=str(tmp_path / "run"))
    said = []
    _, metrics = train(cfg, log=said.append)
    assert metrics[0]["test_acc"] > 0.5 and metrics[0]["train_loss"] < 2.3
    assert [line for line in said if line.startswith("Optimizer: Muon for ")]


def test_a_model_without_conv_filters_is_told_that_muon_steps_nothing():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    line = build_optimizer(Config(optimizer="muon"), model).describe()
    assert line == "Optimizer: muon, but the model has no trainable conv filter: every parameter takes Nesterov SGD"
    assert build_optimizer(Config(optimizer="muon"), small_net()).describe() == (
        "Optimizer: Muon for 2 conv filters (1,368 parameters), Nesterov SGD for the other 112")
    one = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.Flatten(), nn.LazyLinear(2))
    one(torch.zeros(1, 3, 6, 6))
    assert build_optimizer(Config(optimizer="muon"), one).describe() == (
        "Optimizer: Muon for 1 conv filter (108 parameters), Nesterov SGD for the other 130")


def test_linear_schedule_falls_straight_to_zero():
    cfg = Config(lr=0.4, schedule="linear")
    assert [lr_at(cfg, s, 4) for s in range(5)] == pytest.approx([0.4, 0.3, 0.2, 0.1, 0.0])


@pytest.mark.parametrize("values, message", [
    ({"muon_lr": 0.0}, "--muon-lr is a step's size relative to each filter, 0 < LR <= 1, not 0.0"),
    ({"muon_lr": 2.0}, "--muon-lr is a step's size relative to each filter, 0 < LR <= 1, not 2.0"),
    ({"muon_lr": float("nan")}, "--muon-lr must be a finite number"),
    ({"muon_momentum": 1.0}, r"--muon-momentum must be in \[0, 1\), not 1.0"),
])
def test_bad_muon_values_are_one_line(values, message):
    with pytest.raises(UsageError, match=message):
        Config(optimizer="muon", **values)


ARGS = ["--model", "fast_cifar", "--optimizer", "muon", "--epochs", "2", "--limit-train", "256", "--limit-test", "64",
        "--batch-size", "32", "--no-amp", "--device", "cpu", "--quiet"]  # 8 steps an epoch


@pytest.mark.slow
def test_a_muon_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    from tests.test_kill import finish, kill_at, start

    reference, run = tmp_path / "reference", tmp_path / "run"
    finish(start(*ARGS, "--out", str(reference)))
    kill_at(start(*ARGS, "--out", str(run), "--save-every", "0s", pause="step:11"), "step:11")
    assert (load(run / "last.pt").epoch, load(run / "last.pt").step) == (1, 3)
    finish(start("--resume", str(run)))
    a, b = load(reference / "last.pt"), load(run / "last.pt")
    assert a.config["optimizer"] == "muon" and b.epoch == 2
    for key, value in a.model.items():
        assert torch.equal(value, b.model[key]), key
    assert [m["test_loss"] for m in a.metrics] == [m["test_loss"] for m in b.metrics]


def test_a_resumed_run_says_what_muon_steps_as_the_fresh_run_did(tmp_path):
    """fast_cifar's whitened stem is frozen before a fresh run builds its optimizer, but a resumed run
    froze it again only after: its line counted the stem's filters as Muon's (7 conv filters, not 6)."""
    from engine.session import open_session
    from engine.train import train

    cfg = Config(model="fast_cifar", optimizer="muon", epochs=1, limit_train=64, limit_test=32, batch_size=32,
                 amp=False, device="cpu", out=str(tmp_path / "run"))
    fresh, resumed = [], []
    train(cfg, log=fresh.append)
    checkpoint = load(tmp_path / "run" / "last.pt")
    open_session(Config.from_dict(checkpoint.config), checkpoint, say=resumed.append)
    lines = [next(line for line in said if line.startswith("Optimizer: ")) for said in (fresh, resumed)]
    assert lines[0].startswith("Optimizer: Muon for 6 conv filters") and lines[1] == lines[0]
