"""The fused op's backward up to its convolution: ReLU's mask, then max-pool's scatter through
the kernel's int8 window index. Shared by kernels.conv_relu_pool's autograd Function and the
custom backward op of kernels.ops; the convolution's own backward is ATen's in both."""

import torch

from kernels.envelope import POOL, conv_size, memory_format


def conv_output_grad(grad_out, out, win, x, weight, stride, padding):
    """The gradient (N, OC, OH, OW) at the conv output, from grad_out (N, OC, PH, PW) at the pooled
    output `out` whose window position each `win` (int8, row * 2 + col) names; rows and columns a
    floor-mode pool dropped get 0."""
    n, oc, ph, pw = out.shape
    oh, ow = conv_size(*x.shape[2:], *weight.shape[2:], stride, padding)
    grad = torch.where(out > 0, grad_out, 0)  # ReLU passes gradient only where the output is positive
    # The window index as max_pool2d's own argmax (flat row * OW + col in the conv output), so
    # eager pool backward scatters it: one full-resolution write
    top = torch.arange(0, ph * POOL, POOL, device=win.device).view(ph, 1)  # (PH, 1)
    left = torch.arange(0, pw * POOL, POOL, device=win.device)  # (PW,)
    argmax = (top + (win // POOL).long()) * ow + left + (win % POOL).long()  # (N, OC, PH, PW)
    conv_like = torch.empty((n, oc, oh, ow), dtype=grad.dtype, device=grad.device,
                            memory_format=memory_format(x))  # shape and layout only
    return torch.ops.aten.max_pool2d_with_indices_backward(
        grad, conv_like, [POOL, POOL], [POOL, POOL], [0, 0], [1, 1], False, argmax)  # (N, OC, OH, OW)
