"""engine.runtime: device and autocast resolved from the real hardware, models prepared in place."""

import pytest
import torch

from engine.config import Config
from engine.errors import UsageError
from engine.models import build_model
from engine.runtime import Runtime, cpu_has_native_bf16, resolve_amp, resolve_device
from tests.conftest import HAS_CUDA

CPU = torch.device("cpu")


def test_cpu_amp_is_bf16_with_a_warning_only_without_native_bf16():
    warnings = []
    assert resolve_amp(Config(amp=True), CPU, warnings.append) is torch.bfloat16
    assert len(warnings) == (0 if cpu_has_native_bf16() else 1)
    if warnings:
        assert "no native bf16" in warnings[0]


def test_cpu_amp_default_follows_the_hardware_and_no_amp_wins():
    expected = torch.bfloat16 if cpu_has_native_bf16() else None
    assert resolve_amp(Config(), CPU, lambda *_: None) is expected
    assert resolve_amp(Config(amp=False), CPU) is None
    with pytest.raises(UsageError, match="fp16 is for CUDA"):
        resolve_amp(Config(amp=True, amp_dtype="fp16"), CPU)


def test_autocast_uses_the_real_device_type():
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
    with pytest.raises(UsageError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto") == CPU


def test_triton_and_compile_together_are_refused():
    with pytest.raises(UsageError, match="--triton .* --compile"):
        Runtime.from_config(Config(triton=True, compile=True))


def test_prepare_keeps_parameters_and_state_dict_keys():
    model = build_model("cifar_cnn", (3, 32, 32), 10)
    keys = list(model.state_dict())
    runtime = Runtime.from_config(Config(device="cpu", amp=False, channels_last=True))
    runtime.prepare(model)
    assert model.features[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert list(model.state_dict()) == keys
    assert "fp32" in runtime.describe() and "channels_last" in runtime.describe()


def test_cpus_without_native_bf16_default_to_fp32_and_warn_on_amp(monkeypatch):
    import engine.runtime

    monkeypatch.setattr(engine.runtime, "cpu_has_native_bf16", lambda: False)  # as on an AMD Zen 3
    warnings = []
    assert resolve_amp(Config(), CPU, warnings.append) is None and warnings == []
    assert resolve_amp(Config(amp=True), CPU, warnings.append) is torch.bfloat16
    assert len(warnings) == 1 and "several times slower" in warnings[0]


def test_the_allocator_keeps_freed_activations_on_glibc():
    import platform
    import sys

    from engine.runtime import keep_freed_memory

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is glibc
