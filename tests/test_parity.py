"""Every fast path against the plain one: the same weights and batch through channels_last,
autocast, torch.compile and the Triton kernel (each prepared by engine.runtime, as training does)
give the plain eager path's (fp32, NCHW, no compile) logits and one training step's gradients.

Errors are measured as ||got - want|| / ||want|| per tensor (logits, each parameter's gradient):
a weight gradient is a sum over every position of the batch with heavy cancellation, so its
small entries carry no more absolute precision than its large ones.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from engine.config import Config
from engine.models import build_model
from engine.runtime import Runtime
from tests.conftest import HAS_CUDA, HAS_TRITON

DEVICE = "cuda" if HAS_CUDA else "cpu"
# fp32 paths compute the same sums in another order (mkldnn's NHWC kernels, Inductor's fused
# reductions, the kernel's implicit GEMM): the logits agree to ~5e-7 (measured). The gradients
# do too on this batch, but a pool window whose top two values differ by less than that
# rounding may route its gradient to the other pixel on another CPU's kernels, which moved a
# conv weight gradient by up to 1e-2 on other seeds: a real defect is an O(1) error.
FP32_LOGITS, FP32 = 1e-5, 2e-2
# On a GPU eager fp32 convolutions and matmuls use TF32 (10-bit mantissa) unless disabled.
FP32_GPU = 3e-2
# bf16 keeps 8 mantissa bits (2**-9 relative rounding per op): the logits agree to ~5e-3, the
# conv gradients, rounded to bf16 at every layer on the way back and summed with heavy
# cancellation, to 0.05-0.16 (measured on this batch).
BF16_LOGITS, BF16 = 2e-2, 0.3
# fp16 keeps 11 bits: an eighth of bf16's rounding, the same allowance for routing.
FP16_LOGITS, FP16 = 5e-3, 0.1
# The Triton interpreter is slow: its cases use the first two images of the batch.
SMALL = 2


def _flags(**flags):
    """Config flags for one path; everything not named is the plain path."""
    return Config(**{"device": DEVICE, "amp": False, "channels_last": False, **flags})


def _run(cfg, seed_model, x, y):
    """Logits and one training step's parameter gradients (fp32) on a fresh copy of the model."""
    runtime = Runtime.from_config(cfg, warn=lambda *_: None)
    model = runtime.prepare(copy.deepcopy(seed_model))
    if runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with runtime.autocast():
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    loss.backward()
    grads = {name: p.grad.float() for name, p in model.named_parameters()}
    return logits.detach().float(), grads


@pytest.fixture(scope="module")
def plain():
    """The seed model, a batch of 8, and the plain path's results on it and on its first SMALL images."""
    torch.manual_seed(0)
    model = build_model("cifar_cnn", (3, 32, 32), 10).to(DEVICE)
    x = torch.randn(8, 3, 32, 32, device=DEVICE)
    y = torch.randint(0, 10, (8,), device=DEVICE)
    return {8: (model, x, y, _run(_flags(), model, x, y)),
            SMALL: (model, x[:SMALL], y[:SMALL], _run(_flags(), model, x[:SMALL], y[:SMALL]))}


def _assert_close(got, want, tol, what):
    """||got - want|| <= tol * ||want||."""
    assert got.shape == want.shape, what
    error = ((got - want).norm() / want.norm()).item()
    assert error <= tol, f"{what}: relative error {error:.2e} exceeds {tol:.0e}"
    return error


def _check(plain, cfg, logits_tol, tol, batch=8):
    model, x, y, (want_logits, want_grads) = plain[batch]
    logits, grads = _run(cfg, model, x, y)
    errors = {"logits": _assert_close(logits, want_logits, logits_tol, "logits")}
    assert grads.keys() == want_grads.keys()
    for name, grad in grads.items():
        errors[name] = _assert_close(grad, want_grads[name], tol, f"gradient of {name}")
    print(" ".join(f"{k}={v:.1e}" for k, v in errors.items()))


FP32_TOLS = (FP32_GPU, FP32_GPU) if HAS_CUDA else (FP32_LOGITS, FP32)


def test_channels_last_matches_plain(plain):
    _check(plain, _flags(channels_last=True), *FP32_TOLS)


def test_bf16_autocast_matches_plain(plain, monkeypatch):
    if HAS_CUDA and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no bf16")
    monkeypatch.setenv("ENGINE_CPU_BF16", "1")  # the result is the same where bf16 is emulated
    _check(plain, _flags(amp=True, amp_dtype="bf16", channels_last=True), BF16_LOGITS, BF16)


@pytest.mark.cuda
def test_fp16_autocast_matches_plain(plain):
    _check(plain, _flags(amp=True, amp_dtype="fp16", channels_last=True), FP16_LOGITS, FP16)


def test_compile_matches_plain(plain):
    """On CPU the training graph runs eagerly as Dynamo captured it (engine.runtime.CountingInductor);
    on CUDA it is compiled by Inductor."""
    _check(plain, _flags(compile=True, channels_last=True), *FP32_TOLS)


def test_amp_compile_matches_plain(plain, monkeypatch):
    """The headline command, engine train --amp --compile, with bf16 forced on any CPU."""
    if HAS_CUDA and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no bf16")
    monkeypatch.setenv("ENGINE_CPU_BF16", "1")
    _check(plain, _flags(amp=True, amp_dtype="bf16", compile=True, channels_last=True), BF16_LOGITS, BF16)


triton_only = pytest.mark.skipif(not HAS_TRITON, reason="needs triton")


@triton_only
def test_triton_matches_plain(plain):
    _check(plain, _flags(triton=True, channels_last=True), *FP32_TOLS, batch=SMALL)


@pytest.mark.slow
@triton_only
def test_triton_compile_matches_plain(plain):
    """--triton --compile: the kernel as a registered op inside the compiled graph (on CPU its
    interpreter implementation, opaque to Inductor, with the rest of the graph compiled)."""
    _check(plain, _flags(triton=True, compile=True, channels_last=True), *FP32_TOLS, batch=SMALL)


def test_inference_under_compile_matches_plain(plain):
    """Inference graphs are compiled by Inductor on every device."""
    model, x, _, (want_logits, _) = plain[8]
    runtime = Runtime.from_config(_flags(compile=True, channels_last=True))
    compiled = runtime.prepare(copy.deepcopy(model)).eval()
    with torch.no_grad():
        got = compiled(x.contiguous(memory_format=torch.channels_last))
    _assert_close(got, want_logits, FP32_TOLS[0], "logits")
