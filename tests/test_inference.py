"""engine.inference: the AOTInductor-compiled model gives eager's logits and refuses other shapes;
`engine eval --compile` uses it on CPU and agrees with eager evaluation.

Each compile is a C++ build of several seconds, so one compiled model serves two tests.
"""

import copy

import pytest
import torch

from engine.config import Config
from engine.errors import EngineError
from engine.evaluate import evaluate_checkpoint
from engine.inference import CompiledInference, compile_inference
from engine.models import build_model
from engine.runtime import Runtime

FP32 = Runtime.from_config(Config(device="cpu", amp=False, compile=True))


@pytest.fixture(scope="module")
def cifar_cnn():
    """(eager cifar_cnn, its AOT-compiled copy for batch 1, channels_last)."""
    torch.manual_seed(0)
    model = FP32.prepare(build_model("cifar_cnn", (3, 32, 32), 10), compile=False).eval()
    return model, compile_inference(copy.deepcopy(model), (1, 3, 32, 32), FP32)


@pytest.mark.slow
def test_compiled_logits_match_eager_at_batch_1(cifar_cnn):
    model, compiled = cifar_cnn
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x.contiguous(memory_format=torch.channels_last))
        for layout in (torch.contiguous_format, torch.channels_last):  # either layout in, converted
            torch.testing.assert_close(compiled(x.contiguous(memory_format=layout)), expected, rtol=0, atol=1e-4)


def test_another_batch_shape_is_one_line(cifar_cnn):
    _, compiled = cifar_cnn
    with pytest.raises(EngineError, match=r"compiled for batches of shape \[1, 3, 32, 32\], got \[2, 3, 32, 32\]"):
        compiled(torch.zeros(2, 3, 32, 32))


@pytest.mark.slow
def test_a_batchnorm_net_in_nchw_under_bf16_autocast_matches_eager(monkeypatch):
    """fast_cifar (BatchNorm, GELU) in NCHW under bf16 autocast, an odd batch: eager's bf16 logits,
    to bf16's precision (the autocast casts are baked into the exported graph), nearer them than fp32's."""
    monkeypatch.setenv("ENGINE_CPU_BF16", "1")
    runtime = Runtime.from_config(Config(device="cpu", amp=True, compile=True, channels_last=False))
    torch.manual_seed(0)
    model = runtime.prepare(build_model("fast_cifar", (3, 32, 32), 10), compile=False).eval()
    compiled = compile_inference(copy.deepcopy(model), (5, 3, 32, 32), runtime, torch.contiguous_format)
    assert isinstance(compiled, CompiledInference)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad(), runtime.autocast():
        expected = model(x).float()
        logits = compiled(x).float()
    assert (logits - expected).abs().max() <= 0.05 * expected.abs().max()
    assert (logits.argmax(1) == expected.argmax(1)).all()
    with torch.no_grad():
        full = model(x)  # fp32: what the graph computed when autocast around the export call was not recorded
    assert (logits - expected).abs().max() < (logits - full).abs().max() / 2  # bf16's casts are in the graph


@pytest.mark.slow  # a whole-command integration case: CI runs it (README's test command)
def test_eval_compile_on_cpu_is_ahead_of_time_and_agrees_with_eager(tiny_run, monkeypatch):
    """`engine eval CHECKPOINT --compile`: the compiled model evaluates the same images to the same
    accuracy, with a final batch smaller than the compiled shape, run eagerly (compiled whatever it measures:
    tests/test_compile_plan.py checks the decision)."""
    monkeypatch.setenv("ENGINE_COMPILE", "always")
    flags = {"limit_test": 50, "batch_size": 16, "amp": False, "device": "cpu"}
    said = []
    compiled = evaluate_checkpoint(tiny_run[1], {**flags, "compile": True}, log=said.append)
    assert any("AOTInductor" in line for line in said)
    eager = evaluate_checkpoint(tiny_run[1], {**flags, "quiet": True})
    assert compiled["images"] == eager["images"] == 50
    assert compiled["test_acc"] == eager["test_acc"]
    assert compiled["test_loss"] == pytest.approx(eager["test_loss"], abs=1e-5)
    assert compiled["compile_seconds"] > 0 and eager["compile_seconds"] is None  # compile timed apart


@pytest.mark.slow
def test_engine_eval_compile_prints_no_cuda_home_warning_on_a_cpu(tiny_run, tmp_path):
    """Inductor's C++ build imports torch.utils.cpp_extension, which warns about CUDA_HOME without CUDA."""
    import os
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("the warning is only printed without CUDA")
    done = subprocess.run([sys.executable, "-m", "engine", "eval", str(tiny_run[1]), "--compile", "--device", "cpu",
                           "--limit-test", "64", "--batch-size", "32"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "ENGINE_COMPILE": "always"})
    assert done.returncode == 0, done.stderr
    assert "CUDA_HOME" not in done.stderr and "CUDA_HOME" not in done.stdout


class BranchesOnTheData(torch.nn.Module):
    """A forward whose control flow depends on a tensor's value: torch.export cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Linear(4, 10)

    def forward(self, x):
        x = self.conv(x)
        if x.mean() > 0.5:
            x = x * 2
        return self.fc(x.mean((2, 3)))


def test_a_forward_that_branches_on_the_data_is_one_quiet_line(capfd):
    with pytest.raises(EngineError, match=r"could not trace BranchesOnTheData: .*data-dependent.* branches on a tensor's value"):
        compile_inference(BranchesOnTheData(), (2, 3, 8, 8), FP32)
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # torch's symbolic-shape warnings and graph dumps stay off the terminal


BRANCHES = """
import torch


class Branches(torch.nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv, self.fc = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Linear(4, num_classes)

    def forward(self, x):
        x = self.conv(x)
        if x.mean() > 0.5:
            x = x * 2
        return self.fc(x.mean((2, 3)))
"""


@pytest.mark.slow
def test_eval_compile_always_of_such_a_forward_evaluates_eagerly_and_says_why(tmp_path, monkeypatch):
    from engine.train import train

    (tmp_path / "branches.py").write_text(BRANCHES)
    code = f"{tmp_path / 'branches.py'}:Branches"
    out, _ = train(Config(model=code, epochs=1, limit_train=64, limit_test=32, batch_size=32, amp=False, quiet=True,
                          device="cpu", out=str(tmp_path / "run")), log=lambda *_: None)
    monkeypatch.setenv("ENGINE_COMPILE", "always")  # no measurement: the ahead-of-time compile is tried outright
    said = []
    result = evaluate_checkpoint(out / "best.pt", {"compile": True, "amp": False, "limit_test": 32}, log=said.append,
                                 model=code)
    assert any("could not trace Branches" in line and line.endswith(": evaluating eagerly") for line in said), said
    plain = evaluate_checkpoint(out / "best.pt", {"amp": False, "limit_test": 32}, log=lambda *_: None, model=code)
    assert (result["test_acc"], result["test_loss"]) == (plain["test_acc"], plain["test_loss"])


def test_onnx_export_of_such_a_forward_names_the_reason(tmp_path, capfd):
    from export.onnx_export import to_onnx

    with pytest.raises(EngineError, match=r"torch.onnx.export failed: Could not guard on data-dependent .* branches on"):
        to_onnx(BranchesOnTheData().eval(), torch.zeros(2, 3, 8, 8), tmp_path / "m.onnx")
    out, err = capfd.readouterr()
    assert out == "" and err == "" and not (tmp_path / "m.onnx").exists()
