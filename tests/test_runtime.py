"""engine.runtime: device and autocast resolved from the real hardware, models prepared in place."""

import pytest
import torch

from engine import cpu
from engine.config import Config
from engine.errors import EngineError, UsageError
from engine.models import build_model
from engine.inductor import compiled_graphs
from engine.runtime import Runtime, resolve_amp, resolve_device
from tests.conftest import HAS_CUDA

CPU = torch.device("cpu")


def test_cpu_with_native_bf16_uses_it_by_default_and_on_amp(monkeypatch):
    monkeypatch.setenv("ENGINE_CPU_BF16", "1")  # as on a Xeon with AMX
    warnings = []
    assert cpu.has_native_bf16()
    assert resolve_amp(Config(), CPU, warnings.append) is torch.bfloat16
    assert resolve_amp(Config(amp=True), CPU, warnings.append) is torch.bfloat16
    assert resolve_amp(Config(amp=True, amp_dtype="bf16"), CPU, warnings.append) is torch.bfloat16
    assert resolve_amp(Config(amp=False), CPU, warnings.append) is None
    assert warnings == []
    with pytest.raises(UsageError, match="fp16 is for CUDA"):
        resolve_amp(Config(amp=True, amp_dtype="fp16"), CPU)


def test_cpu_without_native_bf16_keeps_fp32_on_amp_unless_bf16_is_forced(monkeypatch):
    monkeypatch.setenv("ENGINE_CPU_BF16", "0")  # as on an AMD Zen 3
    assert not cpu.has_native_bf16()
    warnings = []
    assert resolve_amp(Config(), CPU, warnings.append) is None and warnings == []
    assert resolve_amp(Config(amp=True), CPU, warnings.append) is None  # --amp: only where it gains
    assert len(warnings) == 1 and "keeps fp32" in warnings[0] and "--amp-dtype bf16" in warnings[0]
    assert resolve_amp(Config(amp=True, amp_dtype="bf16"), CPU, warnings.append) is torch.bfloat16
    assert len(warnings) == 2 and "several times slower" in warnings[1]
    assert resolve_amp(Config(amp_dtype="bf16"), CPU, warnings.append) is torch.bfloat16  # explicit, without --amp
    assert resolve_amp(Config(amp=False, amp_dtype="bf16"), CPU, warnings.append) is None  # --no-amp wins
    assert len(warnings) == 3
    runtime = Runtime.from_config(Config(device="cpu", amp=True), warn=lambda *_: None)
    assert runtime.resolved()["precision"] == "fp32"


def test_the_bf16_override_is_checked(monkeypatch):
    monkeypatch.setenv("ENGINE_CPU_BF16", "yes")
    with pytest.raises(EngineError, match="ENGINE_CPU_BF16"):
        cpu.has_native_bf16()
    monkeypatch.delenv("ENGINE_CPU_BF16")
    assert cpu.has_native_bf16() in (True, False)  # the real CPU


def test_resolved_says_what_was_chosen(monkeypatch):
    monkeypatch.setenv("ENGINE_CPU_BF16", "1")
    runtime = Runtime.from_config(Config(device="cpu", amp=True, compile=True, channels_last=False))
    assert runtime.resolved() == {"device": "cpu", "precision": "bf16", "channels_last": False, "compile": True,
                                  "compile_mode": "default", "triton": False, "cpu_threads": torch.get_num_threads()}
    plain = Runtime.from_config(Config(device="cpu", amp=False)).resolved()
    assert plain["precision"] == "fp32" and plain["compile"] is False and plain["compile_mode"] is None
    assert plain["channels_last"] is True
    import json

    assert json.loads(json.dumps(plain)) == plain  # plain values only


def test_autocast_uses_the_real_device_type(monkeypatch):
    monkeypatch.setenv("ENGINE_CPU_BF16", "1")
    runtime = Runtime.from_config(Config(device="cpu", amp=True), warn=lambda *_: None)
    with runtime.autocast():
        out = torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4))
    assert out.dtype is torch.bfloat16
    assert not runtime.use_scaler and not runtime.grad_scaler().is_enabled()
    fp32 = Runtime.from_config(Config(device="cpu", amp=False))
    with fp32.autocast():
        assert torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4)).dtype is torch.float32


@pytest.mark.skipif(HAS_CUDA, reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_usage_error():
    with pytest.raises(EngineError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto") == CPU


def test_prepare_keeps_parameters_and_state_dict_keys():
    model = build_model("cifar_cnn", (3, 32, 32), 10)
    keys = list(model.state_dict())
    runtime = Runtime.from_config(Config(device="cpu", amp=False, channels_last=True))
    runtime.prepare(model)
    assert model.features[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert list(model.state_dict()) == keys
    assert "fp32" in runtime.describe() and "channels_last" in runtime.describe()


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return torch.relu(self.fc(x))


def test_compiled_graphs_counts_recompiles():
    """compiled_graphs() counts the graphs torch.compile builds for prepared models: one per
    new input shape or grad mode, none for a call that reuses a graph."""
    torch.manual_seed(0)
    model = Toy()  # a module class: torch 2.11 compiles nothing for a bare nn.Sequential compiled in place
    Runtime.from_config(Config(device="cpu", amp=False, compile=True, channels_last=False)).prepare(model)
    before = compiled_graphs()
    x = torch.randn(2, 4)
    torch.testing.assert_close(model(x), torch.relu(model.fc(x)))  # the submodule itself runs eagerly
    assert compiled_graphs() == before + 1
    model(torch.randn(2, 4))
    assert compiled_graphs() == before + 1  # same shape: the graph is reused
    with torch.no_grad():
        model(x)
    assert compiled_graphs() == before + 2  # another grad mode: a new graph


def test_cpu_training_graphs_run_eagerly_and_inference_graphs_are_compiled():
    """The backend prepared models compile with: a graph built with grad enabled runs as
    captured (eagerly) when eager_training is set, as on CPU; any other graph goes to Inductor."""
    from engine.inductor import CountingInductor

    gm = torch.fx.symbolic_trace(lambda x: torch.relu(x) * 2)
    x = torch.randn(3, 4)
    backend = CountingInductor(eager_training=True)
    before = compiled_graphs()
    assert backend(gm, [x]) == gm.forward
    with torch.no_grad():
        compiled = backend(gm, [x])
    assert compiled != gm.forward
    out = compiled(x)
    torch.testing.assert_close(out[0] if isinstance(out, (list, tuple)) else out, torch.relu(x) * 2)
    assert compiled_graphs() == before + 2
    assert Runtime.from_config(Config(device="cpu", compile=True)).eager_training
    assert not Runtime.from_config(Config(device="cpu", compile=True, triton=True)).eager_training


def test_compiles_on_cuda_are_decisions_by_measurement_too(monkeypatch):
    """On an H200 cifar_cnn's compiled training step lost to eager at batch 64: --compile on CUDA is
    decided by engine/compile_plan.py as on CPU; the Triton kernel and ENGINE_COMPILE=always compile
    as asked. (The dataclass itself: Runtime.from_config would need a GPU.)"""
    monkeypatch.delenv("ENGINE_COMPILE", raising=False)
    cuda = Runtime(torch.device("cuda"), torch.bfloat16, False, True, True, "default", False)
    assert cuda.plans_compile and not cuda.ahead_of_time and not cuda.eager_training
    cuda.compile_training = False  # measured: eager
    assert not cuda.compiles_training
    cuda.compile_training = True
    assert cuda.compiles_training
    assert not Runtime(torch.device("cuda"), torch.bfloat16, False, True, True, "default", True).plans_compile
    monkeypatch.setenv("ENGINE_COMPILE", "always")
    cuda.compile_training = None
    assert not cuda.plans_compile and cuda.compiles_training


def test_a_bf16_training_graph_under_inductor_has_eagers_finite_gradients():
    """A max over a fused GELU's output in bf16: Inductor kept the GELU in fp32 and the max in bf16,
    so the max's backward found no element equal to it and divided by 0 (NaN in every gradient
    below it; fast_cifar and fast_cifar94 trained NaN from their second step). The backend rounds
    low-precision intermediates as eager does."""
    from engine.inductor import CountingInductor

    torch.manual_seed(0)
    x, weight = torch.randn(16, 8, 3, 3), torch.randn(16, 8, 3, 3)

    def forward(w):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return torch.nn.functional.gelu(torch.nn.functional.conv2d(x, w, padding=1)).amax(dim=(2, 3))

    grads = []
    for run in (forward, torch.compile(forward, backend=CountingInductor())):
        w = weight.clone().requires_grad_()
        run(w).float().sum().backward()
        grads.append(w.grad)
    torch._dynamo.reset()
    assert grads[1].isfinite().all()
    torch.testing.assert_close(grads[1], grads[0], rtol=0.02, atol=0.02)


def test_the_allocator_keeps_freed_activations_on_glibc():
    import platform
    import sys

    from engine.runtime import keep_freed_memory

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is glibc


def test_compile_mode_without_compile_is_said_once_and_with_compile_not_at_all():
    said = []
    Runtime.from_config(Config(device="cpu", compile_mode="max-autotune"), warn=said.append)
    assert said == ["--compile-mode max-autotune does nothing without --compile"]
    said.clear()
    Runtime.from_config(Config(device="cpu", compile=True, compile_mode="max-autotune"), warn=said.append)
    Runtime.from_config(Config(device="cpu"), warn=said.append)
    assert said == []
