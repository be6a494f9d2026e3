"""The eager conv -> max-pool -> ReLU block as one opaque torch custom op, for torch.compile on CPU.

Inductor decomposes max-pool backward into a zero fill and a scatter_add, slower on CPU than
ATen's own kernel (cifar_cnn training: 0.73-0.82x eager). Inside `engine::conv_pool_relu` and its
backward op torch.compile sees one call each and runs the eager ATen kernels, so it compiles
only the rest of the model. Without gradients the plain ops are traced instead: Inductor's
forward pool is faster than eager's (inference 1.14x fp32, 1.66x bf16 on the 2-core Xeon).
"""

import torch
from torch import Tensor

from engine.models import conv_relu_pool_eager


@torch.library.custom_op("engine::conv_pool_relu", mutates_args=())
def _forward(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, padding: int, pool: int) -> tuple[Tensor, Tensor]:
    """(N, C, H, W) -> relu(max_pool2d(conv2d(x))) (N, OC, PH, PW) and the pool's int64 argmax."""
    conv = torch.ops.aten.convolution(x, weight, bias, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], 1)
    pooled, indices = torch.ops.aten.max_pool2d_with_indices(conv, [pool] * 2, [pool] * 2)
    return torch.relu(pooled), indices


@_forward.register_fake
def _(x, weight, bias, stride, padding, pool):
    # The same ATen calls on fake tensors give eager's shapes and strides (channels_last in, out).
    conv = torch.ops.aten.convolution(x, weight, bias, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], 1)
    pooled, indices = torch.ops.aten.max_pool2d_with_indices(conv, [pool] * 2, [pool] * 2)
    return torch.empty_like(pooled), indices


@torch.library.custom_op("engine::conv_pool_relu_backward", mutates_args=())
def _backward(grad_y: Tensor, y: Tensor, indices: Tensor, x: Tensor, weight: Tensor, stride: int, padding: int,
              pool: int, mask: list[bool]) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of x, weight, bias (a 0-element tensor where `mask` says it is not needed)."""
    grad = torch.ops.aten.threshold_backward(grad_y, y, 0)  # ReLU: only where the pooled output is > 0
    conv_like = _conv_like(grad, x, weight, stride, padding)  # max-pool backward reads only its shape and layout
    grad = torch.ops.aten.max_pool2d_with_indices_backward(grad, conv_like, [pool] * 2, [pool] * 2, [0, 0], [1, 1],
                                                           False, indices)  # (N, OC, OH, OW)
    gx, gw, gb = torch.ops.aten.convolution_backward(grad, x, weight, [weight.shape[0]], [stride] * 2, [padding] * 2,
                                                     [1, 1], False, [0, 0], 1, mask)
    empty = grad.new_empty(0)
    return (gx if mask[0] else empty), (gw if mask[1] else empty), (gb if mask[2] else empty)


@_backward.register_fake
def _(grad_y, y, indices, x, weight, stride, padding, pool, mask):
    grad = _conv_like(grad_y, x, weight, stride, padding)
    gx, gw, gb = torch.ops.aten.convolution_backward(grad, x, weight, [weight.shape[0]], [stride] * 2, [padding] * 2,
                                                     [1, 1], False, [0, 0], 1, mask)
    empty = grad.new_empty(0)
    return (gx if mask[0] else empty), (gw if mask[1] else empty), (gb if mask[2] else empty)


def _conv_like(grad, x, weight, stride, padding):
    """An uninitialised tensor with the conv output's shape and eager's layout for it."""
    n, _, h, w = x.shape
    oc, _, kh, kw = weight.shape
    oh, ow = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    layout = torch.channels_last if grad.stride(1) == 1 and oc > 1 else torch.contiguous_format
    return torch.empty((n, oc, oh, ow), dtype=grad.dtype, device=grad.device, memory_format=layout)


def _setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, pool = inputs
    y, indices = output
    ctx.mark_non_differentiable(indices)
    ctx.save_for_backward(y, indices, x, weight)
    ctx.args, ctx.has_bias = (stride, padding, pool), bias is not None


def _autograd(ctx, grad_y, _grad_indices):
    y, indices, x, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    gx, gw, gb = _backward(grad_y.contiguous(memory_format=_format(y)), y, indices, x, weight, *ctx.args,
                           [need_x, need_w, need_b and ctx.has_bias])
    return (gx if need_x else None, gw if need_w else None, gb if need_b and ctx.has_bias else None,
            None, None, None)


def _format(t):
    return torch.channels_last if t.stride(1) == 1 and t.shape[1] > 1 else torch.contiguous_format


_forward.register_autograd(_autograd, setup_context=_setup_context)


def conv_pool_relu(x, weight, bias=None, stride=1, padding=0, pool=2):
    """engine.models.conv_relu_pool_eager as one op: relu(max_pool2d(conv2d(x, weight, bias), pool)).

    Under autocast the inputs are cast as conv2d would cast them, so the op sees one dtype.
    """
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    if not needs_grad:  # inference: Inductor compiles the plain ops faster than eager runs them
        return conv_relu_pool_eager(x, weight, bias, stride, padding, pool)
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    return _forward(x, weight, bias, stride, padding, pool)[0]
