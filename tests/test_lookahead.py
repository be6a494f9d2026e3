"""--lookahead (engine/lookahead.py): airbench94's schedule step for step, kept in checkpoints and
resumed bit for bit after a kill, refused as a change on resume, and checked when loaded."""

import pytest
import torch
from torch import nn

from engine.checkpoint import load, save
from engine.errors import EngineError, UsageError
from engine.lookahead import Lookahead
from engine.resume import resume_config
from engine.train import train


def airbench_lookahead(model, steps, total, grads):
    """airbench94's loop as it is written (legacy/airbench94.py: LookaheadState, alpha_schedule and the
    update at `total`), around plain SGD steps with the given gradients."""
    alpha = 0.95**5 * (torch.arange(total + 1) / total) ** 3
    ema = {k: v.clone() for k, v in model.state_dict().items()}

    def update(decay):
        for ema_param, net_param in zip(ema.values(), model.state_dict().values()):
            if net_param.dtype in (torch.half, torch.float):
                ema_param.lerp_(net_param, 1 - decay)
                net_param.copy_(ema_param)

    for done in range(1, steps + 1):
        sgd_step(model, grads[done - 1])
        if done % 5 == 0:
            update(alpha[done].item())
        if done >= total:
            update(1.0)
            break


def sgd_step(model, grads):
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads):
            p.sub_(0.1 * g)
        model[1].running_mean.mul_(0.9).add_(grads[0].sum())  # a buffer that moves, as BatchNorm's statistics do


@pytest.mark.parametrize("total", [12, 10])  # the last step apart from a sync, and on one
def test_the_schedule_is_airbench94s_step_for_step(total):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    grads = [[torch.randn_like(p) for p in net.parameters()] for _ in range(total)]
    theirs = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    theirs.load_state_dict(net.state_dict())
    airbench_lookahead(theirs, total, total, grads)
    lookahead = Lookahead(net)
    for done in range(1, total + 1):
        sgd_step(net, grads[done - 1])
        lookahead.after_step(net, done, total)
    for key, value in theirs.state_dict().items():  # airbench's decays are float32 values, ours float64: to rounding
        torch.testing.assert_close(net.state_dict()[key], value, rtol=1e-6, atol=1e-7, msg=key)
    assert not torch.equal(net[0].weight, Lookahead(nn.Sequential(nn.Linear(4, 3))).slow["0.weight"])


def test_between_syncs_the_model_trains_freely_and_a_sync_pulls_it_back():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3))
    lookahead = Lookahead(net)
    start = net[0].weight.detach().clone()
    for done in range(1, 5):
        with torch.no_grad():
            net[0].weight.add_(1.0)
        lookahead.after_step(net, done, 10)
    torch.testing.assert_close(net[0].weight, start + 4)  # no sync yet
    assert torch.equal(lookahead.slow["0.weight"], start)
    with torch.no_grad():
        net[0].weight.add_(1.0)
    lookahead.after_step(net, 5, 10)  # decay 0.95^5 * (5 / 10)^3 = 0.0967
    decay = 0.95**5 * 0.5**3
    torch.testing.assert_close(net[0].weight, start + 5 * (1 - decay))
    assert torch.equal(lookahead.slow["0.weight"], net[0].weight)


def test_a_parameter_frozen_mid_run_is_set_to_its_average_once_and_then_stays():
    """fast_cifar94's whitening bias stops after epoch 3: the first sync after that moves it to its
    average (as airbench94's lookahead moves its bias), and from then on it holds still."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3))
    lookahead = Lookahead(net)
    values = []
    for done in range(1, 21):
        if done <= 7:  # trains in steps 1-7, frozen from step 8 on
            with torch.no_grad():
                net[0].bias.add_(torch.randn(3))
        lookahead.after_step(net, done, 20)
        if done == 7:
            frozen_value = net[0].bias.detach().clone()  # where its training left it
        values.append(net[0].bias.detach().clone())
    assert not torch.equal(values[9], frozen_value)  # the sync at step 10 pulled it to its average
    assert all(torch.equal(v, values[9]) for v in values[10:])  # and it stayed there


class Memory(nn.Module):
    """A model whose forward sets a buffer registered as None, then grows it (a memory of features)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.register_buffer("memory", None)

    def forward(self, x):
        features = self.fc(x).detach()
        self.memory = features if self.memory is None else torch.cat([self.memory, features])
        return self.fc(x)


def test_a_buffer_first_set_or_reshaped_by_the_forward_is_taken_as_it_is():
    net = Memory()
    lookahead = Lookahead(net)
    for done in range(1, 11):
        net(torch.randn(2, 4))
        lookahead.after_step(net, done, 10)
    assert net.memory.shape == (20, 3) and torch.equal(lookahead.slow["memory"], net.memory)
    again = Lookahead(Memory())  # a resumed run's, built before any forward
    again.load_state_dict(lookahead.state_dict())
    assert torch.equal(again.slow["memory"], net.memory) and torch.equal(again.slow["fc.weight"], net.fc.weight)
    with pytest.raises(KeyError, match="has no fc.bias"):
        again.load_state_dict({"fc.weight": net.fc.weight})


# ---- whole runs: real trainings and subprocesses ----

ARGS = ["--epochs", "3", "--limit-train", "256", "--limit-test", "64", "--batch-size", "32", "--no-amp",
        "--device", "cpu", "--quiet", "--lookahead"]  # 8 steps an epoch, 24 in all: syncs at 5, 10, 15, 20, 24


@pytest.mark.slow
def test_killed_mid_epoch_and_at_an_epoch_end_the_lookahead_resumes_bit_for_bit(tmp_path):
    from tests.test_kill import finish, kill_at, start

    reference, run = tmp_path / "reference", tmp_path / "run"
    finish(start(*ARGS, "--out", str(reference)))
    kill_at(start(*ARGS, "--out", str(run), "--save-every", "0s", pause="step:7"), "step:7")  # after epoch 1's sync at 5
    partial = load(run / "last.pt")
    assert (partial.epoch, partial.step) == (0, 7) and partial.lookahead is not None
    assert any(not torch.equal(partial.model[k], v) for k, v in partial.lookahead.items())  # 2 steps since the sync
    kill_at(start("--resume", str(run), pause="commit:2"), "commit:2")  # epoch 2's end: last.pt written, best.pt not
    finish(start("--resume", str(run)))
    a, b = load(reference / "last.pt"), load(run / "last.pt")
    assert b.epoch == 3
    for key, value in a.model.items():
        assert torch.equal(value, b.model[key]), key
    for key, value in a.lookahead.items():
        assert torch.equal(value, b.lookahead[key]), key
        if value.is_floating_point():
            assert torch.equal(value, b.model[key]), key  # after the last step the model is the copy
    assert [m["test_loss"] for m in a.metrics] == [m["test_loss"] for m in b.metrics]


@pytest.fixture(scope="module")
def lookahead_run(tmp_path_factory):
    from engine.config import Config

    run = tmp_path_factory.mktemp("lookahead") / "run"
    train(Config(epochs=1, limit_train=256, limit_test=64, batch_size=32, amp=False, device="cpu", quiet=True,
                 lookahead=True, out=str(run)), log=lambda *_: None)
    return run


@pytest.mark.slow  # a 1-epoch run (about 2 s)
def test_a_resume_refuses_turning_it_off_and_a_checkpoint_without_its_copy(lookahead_run, tmp_path):
    with pytest.raises(UsageError, match=r"--no-lookahead differs from its --lookahead \(start a new run"):
        resume_config(lookahead_run, {"lookahead": False}, say=lambda *_: None)
    cfg, checkpoint = resume_config(lookahead_run, {}, say=lambda *_: None)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    checkpoint.lookahead = None
    save(checkpoint, damaged / "last.pt")
    cfg, checkpoint = resume_config(damaged, {}, say=lambda *_: None)
    with pytest.raises(EngineError, match=r"has no lookahead copy \(model_lookahead\) although its run used --lookahead"):
        train(cfg, resume=checkpoint, log=lambda *_: None)


@pytest.mark.slow  # a 1-epoch run (about 2 s)
def test_a_damaged_lookahead_copy_in_a_checkpoint_is_one_line(lookahead_run, tmp_path):
    values = torch.load(lookahead_run / "last.pt", weights_only=True)
    torch.save({**values, "model_lookahead": {"0.weight": [1, 2]}}, tmp_path / "bad.pt")
    with pytest.raises(EngineError, match="damaged engine checkpoint: its model_lookahead is not a state dict of tensors"):
        load(tmp_path / "bad.pt")
    key = next(iter(values["model_lookahead"]))
    torch.save({**values, "model_lookahead": {**values["model_lookahead"], key: torch.full((2,), float("nan"))}},
               tmp_path / "nan.pt")
    with pytest.raises(EngineError, match=f"its model_lookahead {key} holds NaN values"):
        load(tmp_path / "nan.pt")
