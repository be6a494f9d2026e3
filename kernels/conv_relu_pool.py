"""Fused conv2d -> ReLU -> max_pool2d(2): one Triton kernel, read in the order of a Triton tutorial.

What is fused, and why
----------------------
Every stage of the tutorial CNNs is `max_pool2d(relu(conv2d(x, w, b)), 2)`. The engine's eager
path (engine.models.conv_relu_pool_eager) already pools before the ReLU (same values and
gradients, a quarter of the ReLU work), and is still three kernels on CUDA:

    conv  reads x, w, b           writes the full-resolution conv output   (N, OC, OH, OW)
    pool  reads the conv output   writes the pooled output and its int64 argmax (N, OC, OH/2, OW/2)
    relu  reads the pooled output writes a tensor of the same size

(CUDA max-pool writes the int64 indices even without gradients.) The fused kernel reads x, w and
b and writes only the pooled output (plus an int8 window index when training), so the conv
output never reaches DRAM: that removes two full-resolution passes (conv write, pool read), the
indices (8 bytes per pooled element, twice an fp32 value) and the ReLU's pass. Compulsory DRAM
traffic of a forward pass for cifar_cnn at batch 256 (`kernels.traffic` computes it;
tests/test_conv_relu_pool.py re-derives it from the eager ops' real tensors and prints it):

    stage (fp32)                      engine eager      fused   ratio
    conv1 3->64,   32x32 -> 15x15         194.8 MB     17.9 MB   10.9x
    conv2 64->64,  15x15 -> 6x6            48.8 MB     17.3 MB    2.8x
    conv3 64->128,  6x6 -> 2x2              9.5 MB      3.2 MB    3.0x
    all three                             253.2 MB     38.3 MB    6.6x
    all three, fp16/bf16                  144.2 MB     19.2 MB    7.5x  (the indices stay int64)

Where the time goes: conv1 (K = C*KH*KW = 27) does about 45 flop per fused fp32 byte, so it is
bound by memory traffic and fusion is the whole win; conv2 and conv3 (K = 576) do 160-190 flop
per fp32 byte (twice that in fp16), near the A100/H100 ridge point, so fusion removes the eager
path's extra traffic but the kernel's own limit there is its gather and MMA issue rate. The kernel
also never computes the conv rows/columns that a floor-mode pool drops.

How: an implicit GEMM with `tl.dot`. Rows are pooled outputs (N*PH*PW), columns are output
channels, and the reduction runs over C*KH*KW, gathering x on the fly (nothing is unfolded in
memory): as one flat index for fewer than 16 channels (a 3-channel 3x3 conv is one step), tap by
tap over channel blocks otherwise. Each program computes the conv value at every position of its
rows' 2x2 windows in fp32 registers, keeps the running maximum, and only then adds the bias and
applies ReLU: exact, because the bias is constant per channel and ReLU is monotone, so
max_i relu(a_i + b) == relu(max_i a_i + b). When gradients are needed it also stores which
window position won (int8); backward hands that to eager max-pool backward as its argmax and
runs eager convolution_backward (no recompute of the forward).

Envelope (anything else raises ValueError naming the argument, never a wrong result):
kernel 1..7, padding 0..3 and stride 1 or 2 (each per axis), pool 2 (2x2, stride 2, floor mode:
an odd conv output loses its last row/column exactly as in eager); any batch, channel count and
spatial size; x, weight and bias all fp32, fp16 or bf16 (accumulated in fp32) on one CUDA device
(or CPU under TRITON_INTERPRET=1); NCHW, channels_last or any other strides. Double backward is
not supported.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable
from triton.runtime.interpreter import InterpretedFunction

from kernels import envelope, tiles
from kernels.envelope import POOL, autocast_args, images_per_launch, pooled_like
from kernels.tiles import CONFIGS, FLAT_BELOW, reduction_size
from kernels.window import conv_output_grad


# ---------------------------------------------------------------------------------------------
# 1. The specification
# ---------------------------------------------------------------------------------------------
def conv_relu_pool_reference(x, weight, bias=None, stride=1, padding=0, pool=2):
    """What the kernel computes, in eager ops: (N, C, H, W) -> (N, OC, OH // pool, OW // pool)."""
    return F.max_pool2d(F.relu(F.conv2d(x, weight, bias, stride, padding)), pool)


# ---------------------------------------------------------------------------------------------
# 2. The kernel
# ---------------------------------------------------------------------------------------------
@triton.jit
def _dot(a, b, acc, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc += a @ b in fp32. UPCAST is for the interpreter only: its tl.dot cannot take bf16 (it
    would multiply the raw bits), so it gets exact fp32 copies, which is what the MMA computes."""
    if UPCAST:
        a, b = a.to(tl.float32), b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def _conv_flat(acc, x_ptr, w_ptr, x_rows, ih_top, iw_left, rn, col_ok, dy, dx, C, H, W,
               sxc, sxh, sxw, swo, swc, swh, sww,
               KH: tl.constexpr, KW: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
               DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_K: tl.constexpr):
    """Conv values at one window position for few channels (C < 16): one flat reduction index
    k = (c, kh, kw) over C*KH*KW, so a 3-channel 3x3 conv is a single BLOCK_K=32 step."""
    K = C * KH * KW
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)  # (BK,)
        kw = rk % KW
        kh = (rk // KW) % KH
        c = rk // (KW * KH)
        k_ok = rk < K
        dh, dw = kh + dy, kw + dx  # (BK,) input row/column relative to the window's top-left pixel
        # The (BK, BM) transposed tile: an address is a reduction part plus a row part.
        a_ok = k_ok[:, None]
        if PAD_H > 0:  # without padding every receptive field lies inside the image
            ih = ih_top[None, :] + dh[:, None]
            a_ok = a_ok & (ih >= 0) & (ih < H)
        if PAD_W > 0:
            iw = iw_left[None, :] + dw[:, None]
            a_ok = a_ok & (iw >= 0) & (iw < W)
        a = tl.load(x_ptr + (c * sxc + dh * sxh + dw * sxw)[:, None] + x_rows[None, :], mask=a_ok, other=0.0)
        b = tl.load(w_ptr + (c * swc + kh * swh + kw * sww)[:, None] + (rn * swo)[None, :],
                    mask=k_ok[:, None] & col_ok[None, :], other=0.0)  # (BK, BN)
        acc = _dot(tl.trans(a), b, acc, DOT_PRECISION, UPCAST)
    return acc


@triton.jit
def _conv_by_tap(acc, x_ptr, w_ptr, x_rows, ih_top, iw_left, rn, col_ok, dy, dx, C, H, W,
                 sxc, sxh, sxw, swo, swc, swh, sww,
                 KH: tl.constexpr, KW: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
                 CHANNELS_LAST: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Conv values at one window position for 16+ channels: one filter tap (kh, kw) and one block
    of channels per step, so tap offsets and padding checks are per row, never per element."""
    num_cb = tl.cdiv(C, BLOCK_K)
    for i in range(0, KH * KW * num_cb):
        tap = i // num_cb
        c = (i - tap * num_cb) * BLOCK_K + tl.arange(0, BLOCK_K)  # (BK,) channels
        kh = tap // KW
        kw = tap - kh * KW
        c_ok = c < C
        in_img = tl.full((BLOCK_M,), 1, tl.int1)  # (BM,) this tap's pixel lies inside the image
        if PAD_H > 0:
            in_img = in_img & (ih_top + kh + dy >= 0) & (ih_top + kh + dy < H)
        if PAD_W > 0:
            in_img = in_img & (iw_left + kw + dx >= 0) & (iw_left + kw + dx < W)
        x_tap = x_rows + (kh + dy) * sxh + (kw + dx) * sxw  # (BM,)
        if CHANNELS_LAST:  # channels are contiguous: gather (BM, BK) tiles along them
            a = tl.load(x_ptr + x_tap[:, None] + (c * sxc)[None, :], mask=in_img[:, None] & c_ok[None, :], other=0.0)
        else:  # NCHW: (BK, BM) tiles, transposed for the dot
            a = tl.load(x_ptr + (c * sxc)[:, None] + x_tap[None, :], mask=c_ok[:, None] & in_img[None, :], other=0.0)
            a = tl.trans(a)
        b = tl.load(w_ptr + (c * swc + kh * swh + kw * sww)[:, None] + (rn * swo)[None, :],
                    mask=c_ok[:, None] & col_ok[None, :], other=0.0)  # (BK, BN)
        acc = _dot(a, b, acc, DOT_PRECISION, UPCAST)
    return acc


@triton.jit
def conv_relu_pool_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, win_ptr,  # x (N, C, H, W), w (OC, C, KH, KW), b (OC,), out/win (N, OC, PH, PW)
    N, C, H, W, OC, PH, PW,
    sxn, sxc, sxh, sxw,  # element strides of x: NCHW and channels_last are both just strides
    swo, swc, swh, sww,  # ... of the weight
    son, soc, soh, sow,  # ... of the output (the window tensor shares them)
    KH: tl.constexpr, KW: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    PAD_H: tl.constexpr, PAD_W: tl.constexpr, POOL: tl.constexpr,
    HAS_BIAS: tl.constexpr, STORE_WINDOW: tl.constexpr,
    FLAT_K: tl.constexpr,  # C < 16: reduce over flat (c, kh, kw) instead of tap by tap
    CHANNELS_LAST: tl.constexpr,  # x's channel stride is 1
    DOT_PRECISION: tl.constexpr,  # "tf32" or "ieee" for fp32 inputs, as eager conv would
    UPCAST: tl.constexpr,  # interpreter only, see _dot
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Program -> tile. Output-channel tiles vary fastest, so the programs that gather the same
    # rows of x run side by side and share them through L2.
    pid = tl.program_id(0)
    num_n = tl.cdiv(OC, BLOCK_N)
    pid_m, pid_n = pid // num_n, pid % num_n
    M = N * PH * PW

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,) pooled output positions
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,) output channels
    row_ok, col_ok = rm < M, rn < OC
    # Rows past the end repeat the last one instead of being masked: their loads stay in bounds
    # and they are never stored, so the gathers need no row mask.
    r = tl.minimum(rm, M - 1)
    pw = r % PW
    ph = (r // PW) % PH
    n = r // (PW * PH)
    # Every window position of a row reads the same receptive field shifted by a constant, so one
    # offset per row serves them all: the top-left input pixel of the window's first conv output.
    # Offsets are int32: the wrapper splits the batch so that every offset fits.
    ih_top = ph * (POOL * STRIDE_H) - PAD_H  # (BM,)
    iw_left = pw * (POOL * STRIDE_W) - PAD_W
    x_rows = n * sxn + ih_top * sxh + iw_left * sxw  # (BM,) may point into the padding: masked

    best = tl.full((BLOCK_M, BLOCK_N), float("-inf"), tl.float32)  # running max over the window
    win = tl.zeros((BLOCK_M, BLOCK_N), tl.int8)  # which window position holds it
    # Walk the window in max_pool2d's scan order (row-major), so ties resolve the same way. A
    # loop, not unrolled: one copy of the reduction loop keeps register pressure down.
    for p in range(POOL * POOL):
        dy = (p // POOL) * STRIDE_H  # this position's offset inside the receptive field
        dx = (p % POOL) * STRIDE_W
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        if FLAT_K:
            acc = _conv_flat(acc, x_ptr, w_ptr, x_rows, ih_top, iw_left, rn, col_ok, dy, dx, C, H, W,
                             sxc, sxh, sxw, swo, swc, swh, sww, KH, KW, PAD_H, PAD_W,
                             DOT_PRECISION, UPCAST, BLOCK_K)
        else:
            acc = _conv_by_tap(acc, x_ptr, w_ptr, x_rows, ih_top, iw_left, rn, col_ok, dy, dx, C, H, W,
                               sxc, sxh, sxw, swo, swc, swh, sww, KH, KW, PAD_H, PAD_W,
                               CHANNELS_LAST, DOT_PRECISION, UPCAST, BLOCK_M, BLOCK_K)
        take = (acc > best) | (acc != acc)  # strictly greater keeps the first maximum; NaN wins
        best = tl.where(take, acc, best)
        if STORE_WINDOW:
            win = tl.where(take, p, win).to(tl.int8)

    # Epilogue on the maximum only: bias, then a ReLU that keeps NaN (as torch.relu does).
    if HAS_BIAS:
        best += tl.load(b_ptr + rn, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    y = tl.where(best < 0.0, 0.0, best)
    out_off = (n * son + ph * soh + pw * sow)[:, None] + (rn * soc)[None, :]  # (BM, BN)
    ok = row_ok[:, None] & col_ok[None, :]
    tl.store(out_ptr + out_off, y.to(out_ptr.dtype.element_ty), mask=ok)
    if STORE_WINDOW:
        tl.store(win_ptr + out_off, win, mask=ok)


# ---------------------------------------------------------------------------------------------
# 3. Autotuning over kernels.tiles' configs, pruned by its deterministic rule
# ---------------------------------------------------------------------------------------------
def candidate_configs(m, oc, reduction, configs=CONFIGS):
    """kernels.tiles.candidate_configs; under the interpreter only the first survivor."""
    return tiles.candidate_configs(m, oc, reduction, configs, first_only=_INTERPRETED)


def _prune(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}
    m = args["N"] * args["PH"] * args["PW"]
    return candidate_configs(m, args["OC"], reduction_size(args["C"], args["KH"], args["KW"]), configs)


_INTERPRETED = isinstance(conv_relu_pool_kernel, InterpretedFunction)
_autotuned_kernel = triton.autotune(
    CONFIGS,
    key=["N", "C", "H", "W", "OC", "KH", "KW", "STRIDE_H", "STRIDE_W", "PAD_H", "PAD_W",
         "STORE_WINDOW", "CHANNELS_LAST"],
    prune_configs_by={"early_config_prune": _prune},
)(conv_relu_pool_kernel)


# ---------------------------------------------------------------------------------------------
# 4. The wrapper: check, allocate, launch
# ---------------------------------------------------------------------------------------------
def check(x, weight, bias, stride, padding, pool):
    """kernels.envelope.check, then the device: a CUDA tensor, or a CPU one in Triton's interpreter.
    Returns (stride, padding) pairs."""
    stride, padding = envelope.check(x, weight, bias, stride, padding, pool)
    if x.device.type != "cuda" and not (_INTERPRETED and x.device.type == "cpu"):
        raise ValueError(f"x is on {x.device}: the kernel needs a CUDA tensor (or a CPU tensor with "
                         "TRITON_INTERPRET=1 set before triton is first imported)")
    return stride, padding


def kernel_arguments(x, weight, bias, out, win, stride, padding):
    """The kernel's positional arguments and constexprs for one launch (kernels.aot compiles the
    kernel from exactly these)."""
    n, c, h, w = x.shape
    oc, _, kh, kw = weight.shape
    args = (x, weight, x if bias is None else bias, out, out if win is None else win,
            n, c, h, w, oc, *out.shape[2:], *x.stride(), *weight.stride(), *out.stride())
    constexprs = dict(
        KH=kh, KW=kw, STRIDE_H=stride[0], STRIDE_W=stride[1], PAD_H=padding[0], PAD_W=padding[1], POOL=POOL,
        HAS_BIAS=bias is not None, STORE_WINDOW=win is not None, FLAT_K=c < FLAT_BELOW,
        CHANNELS_LAST=x.stride(1) == 1,
        # TF32 for fp32 exactly when eager conv2d would use it; fp16/bf16 ignore the setting
        DOT_PRECISION="tf32" if x.dtype != torch.float32 or conv_allows_tf32() else "ieee",
        UPCAST=_INTERPRETED and x.dtype == torch.bfloat16,
    )
    return args, constexprs


def conv_allows_tf32():
    """Whether eager fp32 conv2d may use TF32, read through torch 2.9+'s fp32_precision settings
    (conv, then cuDNN, then the global one; "none" defers to the next). The legacy allow_tf32 flags
    raise once these have been set, so they are never read."""
    backends = torch.backends
    for precision in (backends.cudnn.conv.fp32_precision, backends.cudnn.fp32_precision, backends.fp32_precision):
        if precision != "none":
            return precision == "tf32"
    return False


def _launch(x, weight, bias, stride, padding, store_window, config=None, launcher=None):
    """Allocate and launch on checked arguments: (N, OC, PH, PW) output and int8 window (or None).
    `launcher` wraps the kernel before its launch (kernels.ops passes torch.library.wrap_triton)."""
    n, c, _, _ = x.shape
    oc, _, kh, kw = weight.shape
    out = pooled_like(x, weight, stride, padding)
    win = torch.empty_like(out, dtype=torch.int8) if store_window else None
    if out.numel() == 0:
        return out, win
    if config is None:
        kernel, meta = _autotuned_kernel, {}
    else:  # a fixed config: the tests run every one of them through the interpreter
        kernel = conv_relu_pool_kernel
        meta = config.all_kwargs()
    images = images_per_launch(x, out)
    for i in range(0, n, images):  # one launch unless the batch is too large for int32 offsets
        part = slice(i, i + images)
        args, constexprs = kernel_arguments(x[part], weight, bias, out[part], None if win is None else win[part],
                                            stride, padding)
        rows = out[part].shape[0] * out.shape[2] * out.shape[3]
        if config is None and _INTERPRETED:
            # The interpreter's one candidate, launched without the autotuner: Triton 3.6's (torch
            # 2.11's) benchmarks even a single config, and its benchmarker needs a GPU driver.
            kernel, meta = conv_relu_pool_kernel, candidate_configs(rows, oc, reduction_size(c, kh, kw))[0].all_kwargs()
        grid = lambda m: (triton.cdiv(rows, m["BLOCK_M"]) * triton.cdiv(oc, m["BLOCK_N"]),)  # noqa: E731
        (launcher(kernel) if launcher else kernel)[grid](*args, **constexprs, **meta)
    return out, win


def conv_relu_pool_forward(x, weight, bias=None, stride=1, padding=0, pool=2, store_window=False, config=None):
    """The kernel without autograd: checks, then returns (output, int8 window index or None)."""
    stride, padding = check(x, weight, bias, stride, padding, pool)
    return _launch(x, weight, bias, stride, padding, store_window, config)


# ---------------------------------------------------------------------------------------------
# 5. Autograd and the public op
# ---------------------------------------------------------------------------------------------
class _ConvReluPoolFunction(torch.autograd.Function):
    """Forward is the kernel; backward routes each pooled gradient to the window position the
    kernel picked (where the output is positive), then runs eager convolution_backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, store_window):
        out, win = _launch(x, weight, bias, stride, padding, store_window)
        if store_window:
            ctx.save_for_backward(x, weight, out, win)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # (N, OC, PH, PW)
        x, weight, out, win = ctx.saved_tensors
        oc = out.shape[1]
        grad = conv_output_grad(grad_out, out, win, x, weight, ctx.stride, ctx.padding)  # (N, OC, OH, OW)
        needs = ctx.needs_input_grad
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad, x, weight, [oc] if ctx.has_bias else None, list(ctx.stride), list(ctx.padding), [1, 1],
            False, [0, 0], 1, [needs[0], needs[1], ctx.has_bias and needs[2]])
        return grad_x, grad_w, grad_b if ctx.has_bias else None, None, None, None


def conv_relu_pool(x, weight, bias=None, stride=1, padding=0, pool=2):
    """Fused `max_pool2d(relu(conv2d(x, weight, bias, stride, padding)), pool)`, differentiable.

    (N, C, H, W) -> (N, OC, OH // 2, OW // 2) in x's dtype (and layout). Under torch.autocast for
    x's device type, x, weight and bias are first cast to the autocast dtype, as conv2d would be.
    """
    x, weight, bias = autocast_args(x, weight, bias)
    stride, padding = check(x, weight, bias, stride, padding, pool)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    return _ConvReluPoolFunction.apply(x, weight, bias, stride, padding, needs_grad)
