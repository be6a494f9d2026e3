"""The fused kernel as torch custom ops, so `--triton --compile` works: `conv_relu_pool` here is
kernels.conv_relu_pool.conv_relu_pool registered with torch.library.

- `kernels::conv_relu_pool` is a `torch.library.triton_op`: torch.compile sees the kernel launch
  itself, so on CUDA Inductor calls the Triton kernel inside the compiled graph.
- On CPU (Triton's interpreter) Inductor cannot compile a Triton kernel, so the op's body routes
  CPU tensors to `kernels::conv_relu_pool_cpu`, an opaque op whose implementation launches the
  kernel in the interpreter; the rest of the graph is still compiled.
- Backward is `kernels::conv_relu_pool_backward`, opaque on every device: eager ReLU mask, ATen
  max-pool backward on the kernel's window index, ATen convolution_backward (no recompute), as in
  kernels.conv_relu_pool._ConvReluPoolFunction.
"""

import torch
from torch import Tensor
from torch.library import triton_op, wrap_triton

from kernels import conv_relu_pool as crp
from kernels.envelope import autocast_args, conv_size, memory_format, pooled_like
from kernels.window import conv_output_grad


@triton_op("kernels::conv_relu_pool", mutates_args=())
def _forward(x: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int], padding: list[int],
             store_window: bool) -> tuple[Tensor, Tensor]:
    """(N, C, H, W) -> pooled output (N, OC, PH, PW) and its int8 window index (empty unless stored)."""
    if x.device.type == "cpu":  # the interpreter: opaque to Inductor
        return torch.ops.kernels.conv_relu_pool_cpu(x, weight, bias, stride, padding, store_window)
    return _with_window(*crp._launch(x, weight, bias, tuple(stride), tuple(padding), store_window, launcher=wrap_triton))


@torch.library.custom_op("kernels::conv_relu_pool_cpu", mutates_args=(), device_types="cpu")
def _forward_cpu(x: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int], padding: list[int],
                 store_window: bool) -> tuple[Tensor, Tensor]:
    return _with_window(*crp._launch(x, weight, bias, tuple(stride), tuple(padding), store_window))


def _with_window(out, win):
    """A custom op returns tensors only: no window index is an empty int8 tensor."""
    return out, out.new_empty(0, dtype=torch.int8) if win is None else win


@_forward_cpu.register_fake
def _(x, weight, bias, stride, padding, store_window):
    out = pooled_like(x, weight, stride, padding)
    return out, (torch.empty_like(out, dtype=torch.int8) if store_window else out.new_empty(0, dtype=torch.int8))


@torch.library.custom_op("kernels::conv_relu_pool_backward", mutates_args=())
def _backward(grad_out: Tensor, out: Tensor, win: Tensor, x: Tensor, weight: Tensor, stride: list[int],
              padding: list[int], mask: list[bool]) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of x, weight and bias (0-element where `mask` says they are not needed)."""
    grad = conv_output_grad(grad_out, out, win, x, weight, stride, padding)  # (N, OC, OH, OW)
    return _conv_backward(grad, x, weight, stride, padding, mask)


def _conv_backward(grad, x, weight, stride, padding, mask):
    gx, gw, gb = torch.ops.aten.convolution_backward(grad, x, weight, [weight.shape[0]], list(stride), list(padding),
                                                     [1, 1], False, [0, 0], 1, mask)
    empty = grad.new_empty(0)
    return (gx if mask[0] else empty), (gw if mask[1] else empty), (gb if mask[2] else empty)


@_backward.register_fake
def _(grad_out, out, win, x, weight, stride, padding, mask):
    n, oc, _, _ = out.shape
    oh, ow = conv_size(*x.shape[2:], *weight.shape[2:], stride, padding)
    grad = torch.empty((n, oc, oh, ow), dtype=grad_out.dtype, device=grad_out.device, memory_format=memory_format(x))
    return _conv_backward(grad, x, weight, stride, padding, mask)


def _setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, store_window = inputs
    out, win = output
    ctx.mark_non_differentiable(win)
    ctx.save_for_backward(out, win, x, weight)
    ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None


def _autograd(ctx, grad_out, _grad_win):
    out, win, x, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    gx, gw, gb = _backward(grad_out, out, win, x, weight, ctx.stride, ctx.padding,
                           [need_x, need_w, need_b and ctx.has_bias])
    return gx if need_x else None, gw if need_w else None, gb if need_b and ctx.has_bias else None, None, None, None


_forward.register_autograd(_autograd, setup_context=_setup_context)


def conv_relu_pool(x, weight, bias=None, stride=1, padding=0, pool=2):
    """kernels.conv_relu_pool.conv_relu_pool through the registered ops (same arguments, same
    checks, same autocast casts), for use under torch.compile."""
    x, weight, bias = autocast_args(x, weight, bias)
    stride, padding = crp.check(x, weight, bias, stride, padding, pool)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    return _forward(x, weight, bias, list(stride), list(padding), needs_grad)[0]
