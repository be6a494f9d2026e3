"""engine.ema and --ema: the average against a hand computation, what a run evaluates, saves and
resumes (bit for bit after kills), what eval and export read, --compile and --nproc 2."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from engine.checkpoint import Checkpoint, load, save
from engine.config import Config
from engine.ema import WeightAverage
from engine.errors import EngineError, UsageError
from engine.evaluate import evaluate_checkpoint
from engine.report import format_epoch
from engine.resume import resume_config
from engine.train import train

TINY = dict(limit_train=128, limit_test=64, batch_size=32, amp=False, device="cpu", quiet=True)  # 4 steps an epoch


def tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def test_the_average_is_the_hand_computed_one_with_batchnorm_statistics_averaged_alike():
    model, decay = tiny_net(), 0.3  # below the warm-up's 2/11, 3/12 and 4/13 from the 3rd step: both decays used
    average = WeightAverage(model, decay)
    generator = torch.Generator().manual_seed(1)
    expected = None
    for step in range(4):
        with torch.no_grad():  # a "step": new weights, and a training forward that moves the running statistics
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))
        model.train()(torch.randn(8, 3, generator=generator))
        average.update(model)
        state = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        d = min(decay, (1 + step) / (10 + step))  # warmed up: after `step` averaged steps, (1 + step) / (10 + step)
        expected = state if expected is None else {k: d * expected[k] + (1 - d) * v for k, v in state.items()}
    averaged = average.state_dict()
    assert average.updates == 4
    assert {k for k in expected} >= {"1.running_mean", "1.running_var", "0.weight"}
    for key, value in expected.items():  # lerp and the hand formula round differently: float32 ulps
        torch.testing.assert_close(averaged[key], value, rtol=1e-6, atol=1e-7)
        assert not torch.equal(averaged[key], model.state_dict()[key]), key  # an average, not a copy
    assert not any(p.requires_grad for p in average.module.parameters())


def test_the_first_update_copies_and_a_loaded_state_continues_the_same():
    model = tiny_net()
    a, b = WeightAverage(model, 0.5), WeightAverage(nn.Sequential(*[m for m in tiny_net()]), 0.5)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    a.update(model)
    assert torch.equal(a.module[0].weight, model[0].weight)  # step 1 is copied: the random init never counts
    b.load_state_dict(a.state_dict(), a.updates)  # what a resume does
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    a.update(model)
    b.update(model)
    assert a.updates == b.updates == 2
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    torch.testing.assert_close(a.module[0].weight, model[0].weight * (2 / 11 / 3 + 9 / 11))  # decay (1 + 1) / (10 + 1)


def test_the_decay_warms_up_to_the_one_given():
    model = tiny_net()
    average = WeightAverage(model, 0.99)
    start = average.module[0].weight.clone()
    with torch.no_grad():
        model[0].weight.copy_(start)
    average.update(model)  # copied
    decays = []
    for _ in range(1000):
        with torch.no_grad():
            before = average.module[0].weight.clone()
            model[0].weight.add_(1.0)
        average.update(model)
        moved = (average.module[0].weight - before) / (model[0].weight - before)  # the weight, 1 - decay
        decays.append(1 - moved.mean().item())
    expected = [min(0.99, (1 + n) / (10 + n)) for n in range(1, 1001)]  # after n averaged steps
    assert expected[:3] == [2 / 11, 3 / 12, 4 / 13] and expected[888] < 0.99 == expected[889]
    assert decays == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1, float("nan"), float("inf")])
def test_a_decay_outside_zero_to_one_is_one_line_naming_ema(value):
    with pytest.raises(UsageError) as error:
        Config(ema=value)
    assert str(error.value).startswith("--ema is the weight average's decay per step, 0 < DECAY < 1")
    assert "\n" not in str(error.value)


def test_ema_alone_is_0_99_and_no_ema_is_off(capsys):
    from engine.cli import bare_optional_values, build_parser, main

    parse = lambda *flags: vars(build_parser().parse_args(  # noqa: E731
        bare_optional_values(["train", *flags, "--epochs", "1"]))).get("ema", "absent")
    assert (parse("--ema"), parse("--ema", "0.9"), parse("--ema=0.95"), parse("--no-ema"), parse()) == (
        0.99, 0.9, 0.95, None, "absent")
    from engine.flags import bare_optional_values as bare

    assert bare(["eval", "--tt", "run/best.pt"]) == ["eval", "--tta=1", "run/best.pt"]  # argparse's abbreviation
    assert bare(["eval", "--tt", "2", "run/best.pt"]) == ["eval", "--tt", "2", "run/best.pt"]
    assert main(["train", "--ema", "nine"]) == 2
    assert capsys.readouterr().err == ("engine: error: engine train: argument --ema: invalid float value: 'nine' "
                                       "(see engine train --help)\n")


@pytest.mark.slow  # two short fast_cifar runs (about 6 s)
def test_no_ema_turns_off_fast_cifar_s_recipe_average(tmp_path):
    from engine.cli import main

    small = ["--limit-train", "64", "--limit-test", "32", "--batch-size", "32", "--epochs", "1", "--device", "cpu",
             "--no-amp", "--quiet"]
    assert main(["train", "--model", "fast_cifar", *small, "--out", str(tmp_path / "r"), "--no-ema"]) == 0
    assert main(["train", "--model", "fast_cifar", *small, "--ema", "--out", str(tmp_path / "e")]) == 0
    off, on = load(tmp_path / "r" / "last.pt"), load(tmp_path / "e" / "last.pt")
    assert (off.config["ema"], off.ema) == (None, None)  # the recipe's 0.99, turned off
    assert on.config["ema"] == 0.99 and on.ema_updates == 2


def test_the_epoch_line_marks_the_average():
    m = {"epoch": 1, "train_acc": 0.5, "train_loss": 1.0, "test_acc": 0.6, "test_loss": 0.9, "images_per_s": 100.0,
         "epoch_s": 1.0}
    assert "Test_acc:60.0%" in format_epoch(m)
    assert "Test_acc(ema):60.0%" in format_epoch({**m, "ema": True})


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    """cifar_cnn on the synthetic set, 2 epochs of 4 steps with --ema 0.8: (run directory, metrics)."""
    out = tmp_path_factory.mktemp("ema") / "run"
    return train(Config(out=str(out), epochs=2, ema=0.8, **TINY), log=lambda *_: None)


@pytest.mark.slow  # a 2-epoch run (about 3 s with its fixture): the quick loop is at its 2-minute budget
def test_a_run_evaluates_saves_and_chooses_best_on_the_average(ema_run):
    run, metrics = ema_run
    last, best = load(run / "last.pt"), load(run / "best.pt")
    assert [m["ema"] for m in metrics] == [True, True]
    assert last.ema_updates == 8 and last.ema.keys() == last.model.keys()
    assert any(not torch.equal(v, last.model[k]) for k, v in last.ema.items() if v.is_floating_point())
    assert best.epoch == max(range(2), key=lambda i: metrics[i]["test_acc"]) + 1  # first of equals: `>`
    # engine eval of the checkpoint measures the average, as the run's evaluation did
    result = evaluate_checkpoint(run / "last.pt", dict(limit_test=64, amp=False, device="cpu", quiet=True))
    assert round(result["test_loss"], 5) == metrics[-1]["test_loss"]
    raw = run.parent / "raw.pt"
    last.ema = None  # the same checkpoint without its average: the last step's weights
    save(last, raw)
    plain = evaluate_checkpoint(raw, dict(limit_test=64, amp=False, device="cpu", quiet=True))
    assert plain["test_loss"] != pytest.approx(result["test_loss"], rel=1e-4)


@pytest.mark.slow  # a 2-epoch run (about 3 s with its fixture): the quick loop is at its 2-minute budget
def test_eval_of_an_averaged_checkpoint_says_so_in_one_line(ema_run):
    run, _ = ema_run
    lines = []
    evaluate_checkpoint(run / "last.pt", dict(limit_test=64, amp=False, device="cpu"), log=lines.append)
    said = [line for line in lines if "weight average" in line]
    assert said == [f"Using the weight average in {run / 'last.pt'} (--ema 0.8, 8 steps), as its evaluations did"]


@pytest.mark.slow  # a 2-epoch run (about 3 s with its fixture): the quick loop is at its 2-minute budget
def test_a_resume_refuses_another_decay_and_a_checkpoint_without_its_average(ema_run, tmp_path):
    run, _ = ema_run
    with pytest.raises(UsageError, match=r"--ema 0.5 differs from its --ema 0.8 \(start a new run"):
        resume_config(run, {"ema": 0.5}, say=lambda *_: None)
    with pytest.raises(UsageError, match=r"--no-ema differs from its --ema 0.8 \(start a new run"):  # --no-ema
        resume_config(run, {"ema": None}, say=lambda *_: None)
    cfg, checkpoint = resume_config(run, {"ema": 0.8}, say=lambda *_: None)  # the same value is fine
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    checkpoint.ema = None
    save(checkpoint, damaged / "last.pt")
    cfg, checkpoint = resume_config(damaged, {"epochs": 2}, say=lambda *_: None)
    with pytest.raises(EngineError, match="has no averaged weights \\(model_ema\\) although its run used --ema"):
        train(cfg, resume=checkpoint, log=lambda *_: None)


@pytest.mark.slow  # a 2-epoch run (about 3 s with its fixture): the quick loop is at its 2-minute budget
def test_a_damaged_average_in_a_checkpoint_is_one_line(ema_run, tmp_path):
    run, _ = ema_run
    values = torch.load(run / "last.pt", weights_only=True)
    values["model_ema"] = {"0.weight": [1, 2]}
    torch.save(values, tmp_path / "bad.pt")
    with pytest.raises(EngineError, match="damaged engine checkpoint: its model_ema is not a state dict of tensors"):
        load(tmp_path / "bad.pt")
    assert Checkpoint.from_dict({**values, "model_ema": None}).ema is None  # a run without --ema


# ---- the command line: real subprocesses ----

ARGS = ["--epochs", "3", "--limit-train", "256", "--limit-test", "64", "--batch-size", "32", "--no-amp",
        "--device", "cpu", "--quiet", "--ema", "0.9"]  # 8 steps an epoch


def engine(*args, cwd, **env_vars):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_vars}
    env.pop("ENGINE_TEST_PAUSE_AT", None)
    result = subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_killed_mid_epoch_and_at_an_epoch_end_the_average_resumes_bit_for_bit(tmp_path):
    from tests.test_kill import finish, kill_at, start

    reference, run = tmp_path / "reference", tmp_path / "run"
    finish(start(*ARGS, "--out", str(reference)))
    kill_at(start(*ARGS, "--out", str(run), "--save-every", "0s", pause="step:3"), "step:3")  # mid-epoch 1
    assert (load(run / "last.pt").epoch, load(run / "last.pt").step, load(run / "last.pt").ema_updates) == (0, 3, 3)
    kill_at(start("--resume", str(run), pause="commit:2"), "commit:2")  # epoch 2's end: last.pt written, best.pt not
    assert (load(run / "last.pt").epoch, load(run / "last.pt").ema_updates) == (2, 16)
    finish(start("--resume", str(run)))
    a, b = load(reference / "last.pt"), load(run / "last.pt")
    assert b.epoch == 3 and b.ema_updates == a.ema_updates == 24
    for key, value in a.model.items():
        assert torch.equal(value, b.model[key]), key
    for key, value in a.ema.items():
        assert torch.equal(value, b.ema[key]), key
    assert [m["test_loss"] for m in a.metrics] == [m["test_loss"] for m in b.metrics]  # the average's evaluations
    best_a, best_b = load(reference / "best.pt"), load(run / "best.pt")
    assert best_a.epoch == best_b.epoch and all(torch.equal(v, best_b.ema[k]) for k, v in best_a.ema.items())


@pytest.mark.slow
def test_eval_and_export_use_the_average(tmp_path):
    engine("train", *ARGS, "--epochs", "2", "--out", "run", cwd=tmp_path)
    checkpoint = load(tmp_path / "run" / "best.pt")
    printed = engine("eval", "run/best.pt", "--json", "--no-amp", "--limit-test", "64", cwd=tmp_path)
    ours = json.loads(printed)
    assert ours["ema"] is True  # the JSON says which weights it measured, as the text's one line does
    assert ours["test_loss"] == pytest.approx(checkpoint.metrics[checkpoint.epoch - 1]["test_loss"], abs=1e-5)
    exported = engine("export", "m.onnx", "--checkpoint", "run/best.pt", cwd=tmp_path)
    assert f"Using the weight average in run/best.pt (--ema 0.9, {checkpoint.ema_updates} steps)" in exported
    assert "Verified on" in exported
    onnx = json.loads(engine("eval", "m.onnx", "--json", "--limit-test", "64", cwd=tmp_path))
    assert onnx["test_loss"] == pytest.approx(ours["test_loss"], abs=1e-4)  # onnxruntime vs PyTorch: fp32 sums
    # an average far from the model (a short warmed-up run's is close to it): which one each file holds shows
    checkpoint.ema = {k: v * 3 if v.is_floating_point() else v for k, v in checkpoint.model.items()}
    save(checkpoint, tmp_path / "far.pt")
    far_torch = json.loads(engine("eval", "far.pt", "--json", "--no-amp", "--limit-test", "64", cwd=tmp_path))
    engine("export", "far.onnx", "--checkpoint", "far.pt", cwd=tmp_path)
    far = json.loads(engine("eval", "far.onnx", "--json", "--limit-test", "64", cwd=tmp_path))
    checkpoint.ema = None  # the trained weights alone, exported the same way: another model
    save(checkpoint, tmp_path / "raw.pt")
    engine("export", "raw.onnx", "--checkpoint", "raw.pt", cwd=tmp_path)
    raw = json.loads(engine("eval", "raw.onnx", "--json", "--limit-test", "64", cwd=tmp_path))
    assert far_torch["ema"] is True and json.loads(engine("eval", "raw.pt", "--json", "--no-amp", "--limit-test", "64",
                                                          cwd=tmp_path))["ema"] is False
    assert far["test_loss"] == pytest.approx(far_torch["test_loss"], abs=1e-4)
    assert abs(raw["test_loss"] - far["test_loss"]) > 1e-2


@pytest.mark.slow
def test_a_compiled_run_evaluates_the_average_not_the_model(tmp_path):
    """The average is prepared (and compiled) apart from the model: the run's evaluations, compiled,
    measure the averaged weights, as an eager evaluation of them does."""
    engine("train", *ARGS, "--epochs", "1", "--compile", "--out", "run", cwd=tmp_path, ENGINE_COMPILE="always")
    checkpoint = load(tmp_path / "run" / "last.pt")
    assert checkpoint.metrics[-1]["compiled_graphs"] >= 2  # the step's and the evaluation's: compiled, not planned away
    eager = json.loads(engine("eval", "run/last.pt", "--json", "--no-amp", "--limit-test", "64", cwd=tmp_path))
    assert eager["test_loss"] == pytest.approx(checkpoint.metrics[-1]["test_loss"], abs=1e-4)


@pytest.mark.slow
def test_two_processes_average_as_one_at_the_same_global_batch(tmp_path):
    common = ["--epochs", "2", "--limit-train", "512", "--limit-test", "128", "--no-amp", "--device", "cpu", "--quiet",
              "--ema", "0.9", "--model", "lenet"]
    engine("train", *common, "--batch-size", "64", "--out", "one", cwd=tmp_path)
    engine("train", "--nproc", "2", *common, "--batch-size", "32", "--out", "two", cwd=tmp_path)
    one, two = load(tmp_path / "one" / "last.pt"), load(tmp_path / "two" / "last.pt")
    assert one.ema_updates == two.ema_updates == 16
    assert [m["ema"] for m in two.metrics] == [True, True]
    for key, value in one.ema.items():  # summed gradients: the same arithmetic, reordered
        if value.is_floating_point():
            torch.testing.assert_close(two.ema[key], value, rtol=0.05, atol=2e-3)
    for a, b in zip(one.metrics, two.metrics):
        assert b["test_acc"] == pytest.approx(a["test_acc"], abs=0.04)


def test_a_bool_buffer_is_the_models_own_and_an_integer_one_is_averaged():
    """A mask buffer was averaged by the library's formula, 0.9 * True + 0.1 * False copied back as
    True: once True, True for good, so the average evaluated a mask the model never had."""
    model = nn.Linear(3, 2)
    model.register_buffer("mask", torch.tensor([True, False, True]))
    model.register_buffer("count", torch.tensor(0))
    average = WeightAverage(model, 0.9)
    for step in range(12):
        with torch.no_grad():
            model.mask.copy_(torch.tensor([step % 2 == 0, step % 2 == 1, False]))
            model.count.fill_(step)
        average.update(model)
        assert torch.equal(average.module.mask, model.mask), step
    assert 0 < average.module.count.item() < 11  # integers: the library's average, truncated (docs/training.md)
