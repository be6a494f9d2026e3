"""The CUDA paths against fp32 eager on the GPU. Every test here is marked `cuda`: skipped without a
GPU, run by `.ci/gpu` (`pytest -m cuda`) on one.

- One training step (engine.session.open_session + engine.train.train_step) from the same seeded
  weights and batch under fp16 autocast with GradScaler, bf16 autocast, torch.compile (Inductor,
  and CUDA graphs with reduce-overhead), channels_last and the Triton kernel, against the plain
  step (fp32 with TF32 off, NCHW, eager): the logits and every parameter's update. The fast paths
  run as the engine runs them, fp32 ones with TF32.
- The Triton kernel (kernels.conv_relu_pool) on cifar_cnn's real layer shapes against its eager
  reference, forward and backward, in every dtype and layout.
- SyncBatchNorm under DistributedDataParallel in a one-rank NCCL group (engine.distributed).
- onnxruntime's CUDA provider (export.session) against its CPU provider, where it is installed.

Errors are ||got - want|| / ||want|| per tensor, as in tests/test_parity.py (whose tolerances
these follow: a weight gradient is a sum over the batch with heavy cancellation).
"""

import contextlib
import copy
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.config import Config
from engine.inductor import compiled_graphs
from engine.models import build_model
from tests.conftest import HAS_TRITON

pytestmark = pytest.mark.cuda

BATCH = 64
# (logits, parameter updates) against the plain step, by model and by the precision the fast path
# computes in. cifar_cnn's are tests/test_parity.py's: bf16 keeps 8 mantissa bits (logits to ~4e-3,
# conv weight updates to 0.14-0.15, measured on the CPU at this batch, seeds 0 and 1: gradients
# rounded at every layer and summed with heavy cancellation); fp16 keeps 11, an eighth of that
# rounding, with the same allowance for a pool window whose top two values are closer than the
# rounding and route the gradient to another pixel. TF32, which the engine's fp32 uses on a GPU,
# rounds the convolutions' and matmuls' inputs to fp16's 10-bit mantissa, so it gets fp16's.
# fast_cifar's seven BatchNorms, normalising by batch statistics whose backward subtracts nearly
# equal sums, amplify it: bf16 logits 2.2-2.5e-2 and updates 0.30-0.38 there (the same measurement).
# A real defect (a wrong layout, dtype or gradient) is an O(1) error.
TOLERANCE = {
    "cifar_cnn": {"tf32": (5e-3, 0.1), "fp16": (5e-3, 0.1), "bf16": (2e-2, 0.3)},
    "fast_cifar": {"tf32": (1e-2, 0.2), "fp16": (1e-2, 0.2), "bf16": (5e-2, 0.6)},
}
MAX_SKIPPED = 4  # fp16 steps GradScaler may skip (an overflow halves its scale) before one counts

STEP_CASES = {  # name: (model, flags of `engine train`, the precision they compute in)
    "cifar_cnn-channels_last": ("cifar_cnn", dict(channels_last=True), "tf32"),
    "cifar_cnn-fp16-gradscaler": ("cifar_cnn", dict(amp=True, amp_dtype="fp16", channels_last=True), "fp16"),
    "cifar_cnn-bf16": ("cifar_cnn", dict(amp=True, amp_dtype="bf16", channels_last=True), "bf16"),
    "cifar_cnn-compile": ("cifar_cnn", dict(compile=True, channels_last=True), "tf32"),
    "cifar_cnn-compile-reduce-overhead": ("cifar_cnn", dict(compile=True, compile_mode="reduce-overhead",
                                                            channels_last=True), "tf32"),
    "cifar_cnn-amp-compile": ("cifar_cnn", dict(amp=True, compile=True, channels_last=True), "bf16"),
    "cifar_cnn-triton": ("cifar_cnn", dict(triton=True, channels_last=True), "tf32"),
    "cifar_cnn-triton-nchw": ("cifar_cnn", dict(triton=True), "tf32"),
    "cifar_cnn-triton-bf16": ("cifar_cnn", dict(triton=True, amp=True, amp_dtype="bf16", channels_last=True), "bf16"),
    "cifar_cnn-triton-compile": ("cifar_cnn", dict(triton=True, compile=True, channels_last=True), "tf32"),
    "fast_cifar-channels_last": ("fast_cifar", dict(channels_last=True), "tf32"),
    "fast_cifar-fp16-gradscaler": ("fast_cifar", dict(amp=True, amp_dtype="fp16", channels_last=True), "fp16"),
    "fast_cifar-bf16": ("fast_cifar", dict(amp=True, amp_dtype="bf16", channels_last=True), "bf16"),
    "fast_cifar-compile": ("fast_cifar", dict(compile=True, channels_last=True), "tf32"),
}


@contextlib.contextmanager
def ieee_fp32():
    """fp32 matmuls and convolutions without TF32 for the block (the engine turns TF32 on when a
    CUDA run starts); the settings are restored after it."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.fp32_precision, conv.fp32_precision
    matmul.fp32_precision, conv.fp32_precision = "ieee", "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


def relative_error(got, want):
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def first_step(tmp_path, model, ieee=False, **flags):
    """One train_step of `model` on the GPU from the seeded initial weights and the first training
    batch of the synthetic set: (batch x, logits, {parameter: its update}), all fp32. `ieee`: the
    step without TF32 (set after open_session, which turns it on)."""
    from engine.session import open_session

    flags = {"amp": False, "channels_last": False, **flags}
    cfg = Config(model=model, device="cuda", epochs=1, batch_size=BATCH, limit_train=2 * BATCH, limit_test=BATCH,
                 quiet=True, out=str(tmp_path / "-".join(f"{k}={v}" for k, v in sorted(flags.items()))), **flags)
    s = open_session(cfg, say=lambda *_: None)
    s.model.train()
    x, y, _ = next(s.train_loader.epoch(0))
    before = {name: p.detach().float().clone() for name, p in s.model.named_parameters() if p.requires_grad}
    with ieee_fp32() if ieee else contextlib.nullcontext():
        logits = _step_until_taken(s, x, y, before)
    updates = {name: p.detach().float() - before[name] for name, p in s.model.named_parameters() if p.requires_grad}
    return x.float(), logits, updates


def _step_until_taken(s, x, y, before):
    """train_step on (x, y) until GradScaler takes a step (fp16); returns its logits (fp32)."""
    from engine.train import train_step

    for _ in range(MAX_SKIPPED + 1):
        scale = s.scaler.get_scale() if s.scaler.is_enabled() else None
        _, logits = train_step(s, x, y, 0)
        s.runtime.sync()
        if scale is None or s.scaler.get_scale() >= scale:
            break
        # GradScaler found inf/nan in the scaled gradients: the step must have changed nothing
        for name, p in s.model.named_parameters():
            if p.requires_grad:
                assert torch.equal(p.detach().float(), before[name]), f"a skipped fp16 step moved {name}"
    else:
        pytest.fail(f"GradScaler skipped {MAX_SKIPPED + 1} fp16 steps in a row (scale now {s.scaler.get_scale()})")
    return logits.float().clone()


@pytest.fixture(scope="module")
def plain_steps(tmp_path_factory):
    """The plain step (fp32 with TF32 off, NCHW, eager) of each model, computed once."""
    steps = {}

    def get(model):
        if model not in steps:
            steps[model] = first_step(tmp_path_factory.mktemp("plain"), model, ieee=True)
        return steps[model]

    return get


@pytest.fixture(autouse=True)
def compiled_as_asked(monkeypatch):
    """The compiled cases test the compiled path: --compile on CUDA is otherwise decided by measurement
    (engine/compile_plan.py), and a 2-batch run is too short to repay a compile."""
    monkeypatch.setenv("ENGINE_COMPILE", "always")


@pytest.mark.parametrize("case", list(STEP_CASES))
def test_training_step_matches_plain_fp32(tmp_path, plain_steps, case):
    model, flags, precision = STEP_CASES[case]
    logits_tol, update_tol = TOLERANCE[model][precision]
    if flags.get("triton") and not HAS_TRITON:
        pytest.skip("needs triton")
    if flags.get("amp_dtype", "auto") != "fp16" and flags.get("amp") and not torch.cuda.is_bf16_supported(
            including_emulation=False):
        pytest.skip("this GPU has no bf16")
    torch.compiler.reset()  # each compiled case from a fresh cache (reduce-overhead's CUDA graphs among them)
    want_x, want_logits, want_updates = plain_steps(model)
    graphs = compiled_graphs()
    x, logits, updates = first_step(tmp_path, model, **flags)
    assert (compiled_graphs() > graphs) == bool(flags.get("compile")), "a compiled case must run compiled graphs"
    assert torch.equal(x, want_x), "both sessions must train on the same batch"
    errors = {"logits": relative_error(logits, want_logits)}
    assert updates.keys() == want_updates.keys()
    for name, update in updates.items():
        assert torch.isfinite(update).all(), f"non-finite update of {name}"
        if want_updates[name].norm() > 0:  # a parameter with no gradient on this batch stays put either way
            errors[name] = relative_error(update, want_updates[name])
    print(case, " ".join(f"{k}={v:.1e}" for k, v in errors.items()))
    assert errors.pop("logits") <= logits_tol, f"logits differ from plain fp32 by {errors}"
    worst = max(errors, key=errors.get)
    assert errors[worst] <= update_tol, f"update of {worst}: relative error {errors[worst]:.2e} > {update_tol}"


def test_compile_on_cuda_is_measured_against_eager_and_kept(tmp_path, monkeypatch):
    """engine/compile_plan.py on the GPU: a run long enough to repay a compile measures the compiled
    training step against eager (each step synced), checks they agree (TF32's tolerance), keeps the
    ratio (fp32 and bf16 apart), and the next decision reads it; a short run stays eager."""
    from engine.compile_plan import plan_training, read
    from engine.models.reference import parse_model
    from engine.runtime import Runtime

    monkeypatch.delenv("ENGINE_COMPILE")
    torch.manual_seed(0)
    ref, shape = parse_model("cifar_cnn"), (BATCH, 3, 32, 32)
    model = build_model("cifar_cnn", shape[1:], 10)
    batch = lambda: (torch.randn(shape, device="cuda"), torch.randint(0, 10, (BATCH,), device="cuda"))  # noqa: E731
    for amp in (False, True):
        runtime = Runtime.from_config(Config(device="cuda", amp=amp, compile=True))
        said = []
        short = plan_training(runtime, model, ref, shape, batch, 10, tmp_path, said.append)
        assert not short.compile and "too little" in said[-1]
        long = plan_training(runtime, model, ref, shape, batch, 10**7, tmp_path, said.append)
        assert long.measured is not None and long.measured["ratio"] > 0, f"compiled disagreed with eager: {said[-1]}"
        assert "measured now" in said[-1]
        again = plan_training(runtime, model, ref, shape, batch, 10**7, tmp_path, said.append)
        assert again.compile == long.compile and "measured earlier" in said[-1]
        print(said[-1])
    assert len([e for e in read(tmp_path).values() if "ratio" in e]) == 2  # fp32 (TF32) and bf16, apart


def test_fp16_step_uses_a_grad_scaler_and_bf16_does_not(tmp_path):
    from engine.runtime import Runtime

    fp16 = Runtime.from_config(Config(device="cuda", amp=True, amp_dtype="fp16"))
    assert fp16.amp_dtype == torch.float16 and fp16.grad_scaler().is_enabled()
    if torch.cuda.is_bf16_supported(including_emulation=False):
        bf16 = Runtime.from_config(Config(device="cuda", amp=True, amp_dtype="bf16"))
        assert bf16.amp_dtype == torch.bfloat16 and not bf16.grad_scaler().is_enabled()


KERNEL_TOLERANCE = {  # (output, gradients) relative to the fp32 reference on the same (rounded) values
    # without TF32 on either side: the same sums in another order; a window whose top two values tie
    # to ~1e-7 may still route its gradient to the other pixel (one such among ~1M windows: ~1e-3)
    torch.float32: (1e-4, 1e-2),
    # output rounded to fp16 (2**-11 relative); eager fp16 backward (convolution_backward)
    torch.float16: (5e-3, 0.1),
    # output rounded to bf16 (2**-8 relative); eager bf16 backward
    torch.bfloat16: (3e-2, 0.1),
}


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", list(KERNEL_TOLERANCE), ids=str)
def test_kernel_on_cifar_cnn_layers_matches_reference(dtype, channels_last):
    """The fused kernel at the shapes it runs in training (cifar_cnn's three blocks, batch 256),
    forward and backward, against its eager fp32 reference on the same values, both without TF32
    (the kernel follows the conv setting; the training-step cases above run it with TF32)."""
    from kernels.aot import seed_layers
    from kernels.conv_relu_pool import conv_relu_pool, conv_relu_pool_reference

    g = torch.Generator(device="cuda").manual_seed(0)
    for layer in (layer for layer in seed_layers(256) if layer.name.startswith("cifar_cnn")):
        fan_in = layer.w_shape[1] * layer.w_shape[2] * layer.w_shape[3]
        x = torch.randn(layer.x_shape, device="cuda", generator=g).to(dtype)  # (N, C, H, W)
        weight = (torch.randn(layer.w_shape, device="cuda", generator=g) / fan_in**0.5).to(dtype)
        bias = (torch.randn(layer.w_shape[0], device="cuda", generator=g) * 0.5).to(dtype)
        if channels_last:
            x, weight = x.contiguous(memory_format=torch.channels_last), weight.contiguous(memory_format=torch.channels_last)
        inputs = [t.detach().requires_grad_() for t in (x, weight, bias)]
        with ieee_fp32():
            out = conv_relu_pool(*inputs, 1, layer.padding)
            grad_out = torch.randn(out.shape, device="cuda", generator=g).to(dtype)
            got = torch.autograd.grad(out, inputs, grad_out)
            reference = [t.detach().float().requires_grad_() for t in (x, weight, bias)]
            want_out = conv_relu_pool_reference(*reference, 1, layer.padding)
            want = torch.autograd.grad(want_out, reference, grad_out.float())
        assert out.dtype == dtype and out.shape == want_out.shape
        assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
        out_tol, grad_tol = KERNEL_TOLERANCE[dtype]
        assert relative_error(out, want_out) <= out_tol, f"{layer.name} forward"
        for name, grad, expected in zip(("x", "weight", "bias"), got, want):
            assert grad.dtype == dtype
            assert relative_error(grad, expected) <= grad_tol, f"{layer.name} gradient of {name}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sync_batchnorm_under_ddp_in_a_one_rank_nccl_group(monkeypatch):
    """fast_cifar (BatchNorm) converted to SyncBatchNorm and wrapped in DistributedDataParallel inside
    engine.distributed.process_group, as torchrun would start one rank: the same logits, gradients
    and running statistics as the plain model. (With one rank SyncBatchNorm takes PyTorch's own
    single-process path, batch_norm; this proves the NCCL group, the conversion and DDP's reducer
    on the device, not the cross-rank reduction, which needs two GPUs.)"""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from engine.distributed import process_group

    for name, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(name, value)
    torch.manual_seed(0)
    plain = build_model("fast_cifar", (3, 32, 32), 10).cuda().train()
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(plain))
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules()) == \
        sum(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules()) > 0
    x = torch.randn(32, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (32,), device="cuda")
    with ieee_fp32():
        want = plain(x)
        F.cross_entropy(want, y).backward()
    with ieee_fp32(), process_group(torch.device("cuda")) as ranks:
        assert (ranks.world, ranks.device) == (1, torch.device("cuda", 0)) and dist.get_backend() == "nccl"
        ddp = DistributedDataParallel(synced, device_ids=[0])
        logits = ddp(x)
        F.cross_entropy(logits, y).backward()
        total = torch.ones(1, device="cuda")
        dist.all_reduce(total)  # a real NCCL collective on the device
        assert total.item() == 1.0
    assert not dist.is_initialized()  # process_group leaves the group on exit
    assert relative_error(logits, want) <= 1e-4
    for (name, p), q in zip(plain.named_parameters(), synced.parameters()):
        if p.requires_grad:
            assert relative_error(q.grad, p.grad) <= 1e-3, f"gradient of {name}"
    for (name, buffer), synced_buffer in zip(plain.named_buffers(), synced.buffers()):
        if buffer.is_floating_point():
            torch.testing.assert_close(synced_buffer, buffer, rtol=1e-4, atol=1e-6, msg=f"running statistic {name}")


def test_onnxruntime_cuda_provider_matches_cpu(request):
    """export.session.open_session(device="cuda") runs on onnxruntime's CUDA provider, and its
    logits match the CPU provider's (cuDNN may use TF32: a looser bound than verify.ATOL)."""
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} has no CUDA provider here (onnxruntime-gpu is not installed)")
    from export.session import open_session
    from export.verify import run_session

    tiny_onnx = request.getfixturevalue("tiny_onnx")  # a training and an export: only once the skip has passed
    cuda, provider = open_session(tiny_onnx, device="cuda")
    assert provider == "CUDAExecutionProvider"
    cpu, _ = open_session(tiny_onnx, device="cpu")
    images = np.random.default_rng(0).random((64, 3, 32, 32), dtype=np.float32)
    got, want = run_session(cuda, images, batch_size=16), run_session(cpu, images)
    assert got.shape == want.shape == (64, 10)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) <= 1e-2
