"""--compile decides by measurement, on CPU and on CUDA (engine/compile_plan.py): the rule, the cache, and what a
training run and `engine eval` then do. Measurements a test needs are planted in the cache file the
engine reads (a decision rests on it, whatever machine runs the test); everything else is real."""

import json
import os
import subprocess
import sys

import pytest
import torch

from engine.compile_plan import FIRST_COMPILE_S, MAX_RATIO, decide, key, read, record
from engine.config import Config
from engine.inference import AOT_KIND
from engine.models.reference import parse_model
from engine.inductor import compiled_graphs
from engine.runtime import Runtime
from engine.train import train

CPU = dict(device="cpu", amp=False, channels_last=True)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Dynamo stops compiling a function after 8 recompiles in a process (other tests compile the same
    forward): each test here starts from empty compile caches."""
    torch.compiler.reset()
    yield
    torch.compiler.reset()


def test_a_measured_loss_never_compiles(tmp_path):
    record(tmp_path, "k", 0.9, 1.0)
    decision = decide("train", "k", tmp_path, work_s=10_000)
    assert not decision.compile and "0.90x" in decision.why


def test_a_measured_win_compiles_only_where_the_work_repays_the_compile(tmp_path):
    record(tmp_path, "k", 1.25, 10.0)  # saves a fifth of the work: 50 s of work saves 10 s
    assert not decide("eval", "k", tmp_path, work_s=49).compile
    assert decide("eval", "k", tmp_path, work_s=51).compile


@pytest.mark.parametrize("device,kind", [("cpu", "train"), ("cpu", "eval"), ("cpu", "aot"), ("cuda", "train"), ("cuda", "eval")])
def test_before_any_measurement_only_work_that_could_pay_compiles(tmp_path, device, kind):
    enough = FIRST_COMPILE_S[device][kind] / (1 - 1 / MAX_RATIO[device][kind])  # the work a best-case compile repays
    assert not decide(kind, "k", tmp_path, work_s=enough * 0.99, device=device).compile
    decision = decide(kind, "k", tmp_path, work_s=enough * 1.01, device=device)
    assert decision.compile and decision.measured is None


def test_a_short_gpu_run_is_judged_by_what_a_gpu_compile_costs_and_gains(tmp_path):
    """On an H200 a 2-epoch cifar_cnn run is about 5 s of eager steps: its best case cannot repay a
    GPU compile, and its decision is not the CPU's (40 s compiles, 1.25x at best) either way round."""
    assert not decide("train", "k", tmp_path, work_s=5.0, device="cuda").compile
    gpu_pays = FIRST_COMPILE_S["cuda"]["train"] / (1 - 1 / MAX_RATIO["cuda"]["train"]) * 1.01
    assert decide("train", "k", tmp_path, work_s=gpu_pays, device="cuda").compile
    assert not decide("train", "k", tmp_path, work_s=gpu_pays, device="cpu").compile


def test_the_key_names_everything_a_measurement_depends_on():
    ref = parse_model("cifar_cnn")
    runtime = Runtime.from_config(Config(**CPU, compile=True))
    base = key("train", ref, (64, 3, 32, 32), runtime)
    assert base == key("train", ref, (64, 3, 32, 32), runtime)
    assert base != key("eval", ref, (64, 3, 32, 32), runtime)
    assert base != key("train", ref, (32, 3, 32, 32), runtime)
    assert base != key("train", parse_model("fast_cifar"), (64, 3, 32, 32), runtime)
    assert base != key("train", ref, (64, 3, 32, 32), runtime, precision="bf16")


def test_an_edit_to_a_users_model_file_is_another_key(tmp_path):
    """A measurement of the old code must not decide for the edited one (same path, same factory)."""
    runtime = Runtime.from_config(Config(**CPU, compile=True))
    path = tmp_path / "nets.py"
    path.write_text("import torch.nn as nn\ndef Net(num_classes=10):\n    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n")
    from engine.precision import _key as precision_key  # the --amp decision's cache, keyed the same way

    x = torch.zeros(64, 3, 32, 32)
    before = key("train", parse_model(f"{path}:Net"), (64, 3, 32, 32), runtime), precision_key(parse_model(f"{path}:Net"), x, runtime)
    assert before == (key("train", parse_model(f"{path}:Net"), (64, 3, 32, 32), runtime),
                      precision_key(parse_model(f"{path}:Net"), x, runtime))
    path.write_text(path.read_text().replace("nn.Flatten(), ", "nn.Flatten(), nn.Dropout(0.1), "))
    after = key("train", parse_model(f"{path}:Net"), (64, 3, 32, 32), runtime), precision_key(parse_model(f"{path}:Net"), x, runtime)
    assert before[0] != after[0] and before[1] != after[1]


def _run(tmp_path, name, **flags):
    said = []
    cfg = Config(**{**CPU, "epochs": 2, "limit_train": 256, "limit_test": 128, "batch_size": 64, "compile": True,
                    "cache_dir": str(tmp_path / "cache"), "out": str(tmp_path / name), **flags})
    _, metrics = train(cfg, log=said.append)
    return said, metrics


@pytest.mark.slow
def test_a_short_run_trains_and_evaluates_eagerly_and_says_why(tmp_path):
    before = compiled_graphs()
    said, metrics = _run(tmp_path, "short")
    assert compiled_graphs() == before  # nothing went to Dynamo or Inductor
    assert any("training step runs eagerly" in line and "too little" in line for line in said)
    assert any("evaluation runs eagerly" in line for line in said)
    entries = read(tmp_path / "cache")
    assert [e["model"] for e in entries.values()] == ["cifar_cnn"]  # the eager step time, measured once
    assert metrics[-1]["compiled_graphs"] == compiled_graphs()


@pytest.mark.slow  # a whole-command integration case: CI runs it (README's test command)
def test_a_measured_training_win_compiles_the_training_step(tmp_path):
    ref, runtime = parse_model("cifar_cnn"), Runtime.from_config(Config(**CPU, compile=True))
    record(tmp_path / "cache", key("train", ref, (64, 3, 32, 32), runtime), 2.0, 0.0)
    before = compiled_graphs()
    said, _ = _run(tmp_path, "compiled")
    assert any("training step is compiled" in line and "2.00x" in line for line in said)
    assert compiled_graphs() >= before + 2  # the training graph and the evaluation graph


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [3.0, 0.5])
def test_evaluations_compile_from_the_second_one_where_measured_faster(tmp_path, ratio):
    ref, runtime = parse_model("cifar_cnn"), Runtime.from_config(Config(**CPU, compile=True))
    record(tmp_path / "cache", key("eval", ref, (64, 3, 32, 32), runtime), ratio, 0.0)
    before = compiled_graphs()
    said, metrics = _run(tmp_path, f"eval{ratio}", epochs=3)
    assert any("training step runs eagerly" in line for line in said)
    compiled = [line for line in said if "evaluation compiled" in line]
    assert bool(compiled) == (ratio > 1)
    assert compiled_graphs() == before + (1 if ratio > 1 else 0)  # one inference graph, no training graph
    assert len(metrics) == 3


def _engine_eval(checkpoint, cache, *flags):
    done = subprocess.run([sys.executable, "-m", "engine", "eval", str(checkpoint), "--compile", "--device", "cpu",
                           "--no-amp", "--limit-test", "64", "--batch-size", "32", *flags],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "ENGINE_CACHE_DIR": str(cache), "ENGINE_COMPILE": "measured"})
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


@pytest.mark.slow
def test_engine_eval_compile_skips_a_compile_the_work_cannot_repay(tiny_run, tmp_path):
    out = _engine_eval(tiny_run[1], tmp_path / "cache")
    assert "evaluating eagerly" in out and "too little" in out and "after compiling" not in out
    assert not (tmp_path / "cache" / "compiled").exists()


@pytest.mark.slow
def test_engine_eval_compile_measures_keeps_and_reuses_the_compiled_model(tiny_run, tmp_path):
    """A planted win makes it compile; it then measures the compiled model itself, records that, and
    keeps the package only where it won, which the next evaluation of the checkpoint loads."""
    cache = tmp_path / "cache"
    ref, runtime = parse_model("cifar_cnn"), Runtime.from_config(Config(**CPU, compile=True))
    aot = key(AOT_KIND, ref, (32, 3, 32, 32), runtime)
    record(cache, aot, 5.0, 0.0)
    first = _engine_eval(tiny_run[1], cache)
    assert "compiling ahead of time" in first
    measured = read(cache)[aot]
    assert measured["what"] == "inference, AOTInductor" and measured["compile_s"] > 0
    packages = list((cache / "compiled").glob("*.pt2"))
    second = _engine_eval(tiny_run[1], cache)
    if measured["ratio"] >= 1:
        assert len(packages) == 1 and "compiled ahead of time for this checkpoint earlier" in second
    else:
        assert packages == [] and "evaluating eagerly" in second and "measured earlier" in second
    assert json.loads((cache / "compile.json").read_text())[aot] == measured  # nothing measured twice
    torch.compiler.reset()


def test_a_compiled_training_step_is_checked_against_eager_before_it_is_timed():
    from engine.compile_plan import agrees, measure_training
    from engine.models import build_model
    from engine.inductor import CountingInductor

    runtime = Runtime.from_config(Config(**CPU, compile=True))
    torch.manual_seed(0)
    model = build_model("cifar_cnn", (3, 32, 32), 10).to(memory_format=torch.channels_last)
    x, y = torch.randn(16, 3, 32, 32).contiguous(memory_format=torch.channels_last), torch.randint(0, 10, (16,))
    other = build_model("cifar_cnn", (3, 32, 32), 10).to(memory_format=torch.channels_last)  # other weights
    assert not agrees(model, other, runtime, x, y)
    compiled = build_model("cifar_cnn", (3, 32, 32), 10).to(memory_format=torch.channels_last)
    compiled.load_state_dict(model.state_dict())
    compiled.compile(backend=CountingInductor())
    assert agrees(model, compiled, runtime, x, y)
    ratio, compile_s = measure_training(model, runtime, x, y)
    assert ratio > 0 and compile_s > 0
    torch.compiler.reset()


def test_an_evaluation_cut_short_by_the_target_screen_counts_as_a_whole_one(tmp_path):
    """--target-acc's screen may stop an evaluation after a tenth of the test set: its time is scaled
    to the whole set, for the eager baseline and for the compiled measurement alike."""
    from engine.compile_eval import EvalPlan

    runtime = Runtime.from_config(Config(**CPU, compile=True))
    plan = EvalPlan(runtime, parse_model("cifar_cnn"), (64, 3, 32, 32), 4, tmp_path, say=lambda *_: None)
    plan.timed(0.5, share=0.1)  # eager, a tenth of the images in 0.5 s: 5 s a whole evaluation
    assert plan.eager_s == pytest.approx(5.0) and plan.left == 3 and plan.state == "undecided"
    plan.state, plan.compile_s = "measuring", 1.0  # as model() leaves it after compiling in 1 s
    plan.timed(1.25, share=0.1)  # 0.25 s of compiled work for a tenth: 2.5 s a whole one
    assert read(tmp_path)[plan.key]["ratio"] == pytest.approx(2.0) and plan.state == "compiled"


def test_a_decision_file_that_cannot_be_written_is_said_once(tmp_path, capsys):
    """A read-only cache folder: the run said "cached in .../precision.json" and nothing was written."""
    from engine import decisions

    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "precision.json").mkdir()  # a folder where the file goes: os.replace fails as read-only would
    decisions.write(folder / "precision.json", {"a": 1})
    decisions.write(folder / "precision.json", {"a": 2})
    err = capsys.readouterr().err
    assert err.count("engine: warning: could not write") == 1 and "measured again next time" in err
    assert decisions.read(folder / "precision.json") == {} and list(folder.iterdir()) == [folder / "precision.json"]
