"""Every fast path against the plain one: the same weights and batch through channels_last,
autocast, torch.compile and the Triton kernel (each prepared by engine.runtime, as training does)
give the plain eager path's (fp32, NCHW, no compile) logits, loss and one training step's gradients.

On the engine's cifar_cnn and on the models users bring (issue 15): a tutorial-style `class Net`
(nn.Sequential conv/ReLU/max-pool stages, which --triton fuses), one with BatchNorm, one with a
residual add, and torchvision's resnet18 at 32x32.

Errors are measured as ||got - want|| / ||want|| per tensor (logits, loss, each parameter's
gradient): a weight gradient is a sum over every position of the batch with heavy cancellation,
so its small entries carry no more absolute precision than its large ones.
"""

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.config import Config
from engine.errors import UsageError
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
# bf16 keeps 8 mantissa bits (2**-9 relative rounding per op): the logits agree to ~5e-3, the
# conv gradients, rounded to bf16 at every layer on the way back and summed with heavy
# cancellation, to 0.05-0.16 (measured on this batch).
BF16_LOGITS, BF16 = 2e-2, 0.3
# resnet18 in train mode has 20 bf16 layers, each followed by a BatchNorm on the batch's
# statistics, whose backward subtracts two nearly equal per-channel sums: its bf16 logits land
# 0.043-0.046 from fp32 and its gradients 0.40-0.46 (measured at batch 8 and 32; in eval mode the
# logits agree to 0.0075). A real defect (a wrong layout, dtype or gradient) is an O(1) error.
BF16_DEEP = {"resnet18": (0.1, 0.7)}
# fp16 keeps 11 bits: an eighth of bf16's rounding, the same allowance for routing. resnet18's
# 20 train-mode BatchNorms take it further, as in bf16: its fp16 logits landed 8.8e-3 from fp32 on
# an H200 (2026-12-04), about an eighth of bf16's 0.043-0.046 on the CPU.
FP16_LOGITS, FP16 = 5e-3, 0.1
FP16_DEEP = {"resnet18": (2e-2, 0.2)}
# On a GPU the engine runs fp32 convolutions and matmuls in TF32 (engine.runtime), fp16's 10-bit
# mantissa, and the plain path does too, each with its own cuDNN algorithm: fp16's allowance.
# Measured on an H200 (2026-12-04): conv weight gradients 3.8e-2 and a BatchNorm's bias gradient
# 6.8e-2 apart between NCHW and channels_last, eager and compiled.
FP32_GPU = (FP16_LOGITS, FP16)
# The Triton interpreter is slow: its cases use the first two images of the batch.
SMALL = 2


class TutorialNet(nn.Module):
    """The tutorials' own style: conv -> ReLU -> max-pool stages in an nn.Sequential (all three
    fused under --triton), then Linear layers. (3, 32, 32) -> 10 logits."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3), nn.ReLU(), nn.MaxPool2d(2),  # (16, 15, 15)
            nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),  # (32, 6, 6)
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),  # (32, 3, 3)
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 3 * 3, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class BatchNormNet(nn.Module):
    """conv -> BatchNorm -> ReLU -> max-pool stages (nothing for --triton: the norm sits between)
    and a BatchNorm1d in the head; trained in train mode, so on the batch's statistics."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),  # (16, 16, 16)
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),  # (32, 8, 8)
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.BatchNorm1d(64), nn.ReLU(),
                                        nn.Linear(64, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class ResidualNet(nn.Module):
    """A stem --triton fuses, a residual block (its output added to its input), global average
    pool, linear."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))  # (16, 16, 16)
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.conv2(F.relu(self.conv1(x))))  # the residual add, (B, 16, 16, 16)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _resnet18():
    import torchvision

    return torchvision.models.get_model("resnet18", weights=None, num_classes=10)


MODELS = {
    "cifar_cnn": lambda: build_model("cifar_cnn", (3, 32, 32), 10),
    "tutorial": TutorialNet,
    "batchnorm": BatchNormNet,
    "residual": ResidualNet,
    "resnet18": _resnet18,
}
FUSED = {"cifar_cnn": 3, "tutorial": 3, "residual": 1}  # blocks --triton routes through the kernel


def _models(*names, slow=()):
    return [pytest.param(name, marks=pytest.mark.slow) if name in slow else name for name in names]


def _flags(**flags):
    """Config flags for one path; everything not named is the plain path."""
    return Config(**{"device": DEVICE, "amp": False, "channels_last": False, **flags})


def _run(cfg, seed_model, x, y):
    """Logits, loss and one training step's parameter gradients (fp32) on a fresh copy of the
    model, and the runtime that prepared it."""
    runtime = Runtime.from_config(cfg, warn=lambda *_: None)
    model = runtime.prepare(copy.deepcopy(seed_model))
    if runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with runtime.autocast():
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    loss.backward()
    grads = {name: p.grad.float() for name, p in model.named_parameters()}
    return (logits.detach().float(), loss.detach().float(), grads), runtime


@functools.cache
def _plain(name):
    """The seed model, a batch of 8, and the plain path's results on it and on its first SMALL images."""
    torch.manual_seed(0)
    model = MODELS[name]().to(DEVICE)
    x = torch.randn(8, 3, 32, 32, device=DEVICE)
    y = torch.randint(0, 10, (8,), device=DEVICE)
    return {8: (model, x, y, _run(_flags(), model, x, y)[0]),
            SMALL: (model, x[:SMALL], y[:SMALL], _run(_flags(), model, x[:SMALL], y[:SMALL])[0])}


def _assert_close(got, want, tol, what, floor=0.0):
    """||got - want|| <= tol * max(||want||, floor)."""
    assert got.shape == want.shape, what
    error = ((got - want).norm() / max(want.norm().item(), floor)).item()
    assert error <= tol, f"{what}: relative error {error:.2e} exceeds {tol:.0e}"
    return error


def _check(name, cfg, logits_tol, tol, batch=8):
    model, x, y, (want_logits, want_loss, want_grads) = _plain(name)[batch]
    (logits, loss, grads), runtime = _run(cfg, model, x, y)
    errors = {"logits": _assert_close(logits, want_logits, logits_tol, "logits"),
              "loss": _assert_close(loss, want_loss, logits_tol, "loss")}
    assert grads.keys() == want_grads.keys()
    # A conv bias before a train-mode BatchNorm has an exactly zero gradient (the norm subtracts
    # the batch mean): what each path computes for it is rounding noise, up to 3.5e-4 of the
    # largest gradient in bf16 on an H200, so a gradient is measured against at least 1e-2 of the
    # largest one (every other gradient here is far above that).
    floor = 1e-2 * max(g.norm().item() for g in want_grads.values())
    for param, grad in grads.items():
        errors[param] = _assert_close(grad, want_grads[param], tol, f"gradient of {param}", floor)
    print(f"{name}: " + " ".join(f"{k}={v:.1e}" for k, v in errors.items()))
    return runtime


FP32_TOLS = FP32_GPU if HAS_CUDA else (FP32_LOGITS, FP32)


@pytest.mark.parametrize("name", _models(*MODELS, slow=["resnet18"]))
def test_channels_last_matches_plain(name):
    _check(name, _flags(channels_last=True), *FP32_TOLS)


@pytest.mark.parametrize("name", _models(*MODELS, slow=["resnet18"]))
def test_bf16_autocast_matches_plain(name, monkeypatch):
    if HAS_CUDA and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no bf16")
    monkeypatch.setenv("ENGINE_CPU_BF16", "1")  # the result is the same where bf16 is emulated
    _check(name, _flags(amp=True, amp_dtype="bf16", channels_last=True), *BF16_DEEP.get(name, (BF16_LOGITS, BF16)))


@pytest.mark.cuda
@pytest.mark.parametrize("name", _models(*MODELS))
def test_fp16_autocast_matches_plain(name):
    _check(name, _flags(amp=True, amp_dtype="fp16", channels_last=True), *FP16_DEEP.get(name, (FP16_LOGITS, FP16)))


@pytest.mark.parametrize("name", _models(*MODELS, slow=["resnet18"]))
def test_compile_matches_plain(name):
    """On CPU the training graph runs eagerly as Dynamo captured it (engine.inductor.CountingInductor);
    on CUDA it is compiled by Inductor."""
    _check(name, _flags(compile=True, channels_last=True), *FP32_TOLS)


def test_amp_compile_matches_plain(monkeypatch):
    """The headline command, engine train --amp --compile, with bf16 forced on any CPU."""
    if HAS_CUDA and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no bf16")
    monkeypatch.setenv("ENGINE_CPU_BF16", "1")
    _check("cifar_cnn", _flags(amp=True, amp_dtype="bf16", compile=True, channels_last=True), BF16_LOGITS, BF16)


triton_only = pytest.mark.skipif(not HAS_TRITON, reason="needs triton")


@pytest.mark.slow
@triton_only
@pytest.mark.parametrize("name", _models(*FUSED))
def test_triton_matches_plain(name):
    runtime = _check(name, _flags(triton=True, channels_last=True), *FP32_TOLS, batch=SMALL)
    assert runtime.fused_blocks == FUSED[name]


@pytest.mark.slow
@triton_only
@pytest.mark.parametrize("name", _models(*FUSED))
def test_triton_compile_matches_plain(name):
    """--triton --compile: the kernel as a registered op inside the compiled graph (on CPU its
    interpreter implementation, opaque to Inductor, with the rest of the graph compiled)."""
    _check(name, _flags(triton=True, compile=True, channels_last=True), *FP32_TOLS, batch=SMALL)


@pytest.mark.parametrize("name", ["batchnorm", "resnet18"])
def test_triton_refuses_a_model_with_no_run_to_fuse(name):
    with pytest.raises(UsageError, match="has no Conv2d -> ReLU -> MaxPool2d\\(2\\) run"):
        Runtime.from_config(_flags(triton=True)).prepare(MODELS[name]())


@pytest.mark.parametrize("name", _models(*MODELS, slow=["tutorial", "batchnorm", "residual", "resnet18"]))
def test_inference_under_compile_matches_plain(name):
    """Inference graphs are compiled by Inductor on every device (BatchNorm on its running statistics)."""
    model, x, _, _ = _plain(name)[8]
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        want = model(x)
    runtime = Runtime.from_config(_flags(compile=True, channels_last=True))
    compiled = runtime.prepare(copy.deepcopy(model)).eval()
    with torch.no_grad():
        got = compiled(x.contiguous(memory_format=torch.channels_last))
    _assert_close(got, want, FP32_TOLS[0], "logits")
