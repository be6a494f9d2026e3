"""The blocks the networks are made of: `ConvReluPool` (the unit the fused kernel replaces) and
`ConvPoolBNBlock` (airbench's conv -> pool -> BatchNorm -> GELU -> conv -> BatchNorm -> GELU).

A ConvReluPool's op is a plain attribute, so an optional fused kernel (kernels/conv_relu_pool.py)
can replace it without touching the parameters or their state-dict names.
"""

import torch.nn.functional as F
from torch import nn


def conv_relu_pool_eager(x, weight, bias=None, stride=1, padding=0, pool=2):
    """max_pool2d(relu(conv2d(x))), the op a ConvReluPool block runs unless a kernel replaces it.

    Pooling before the ReLU gives the same values and the same gradients (ReLU is monotone, so
    the window's argmax is unchanged, and a window whose max is <= 0 passes no gradient either
    way), but the ReLU and its backward then touch a quarter of the elements: on the 2-core CPU
    that made cifar_cnn's first block 3x faster to train (15 -> 4.6 ms, batch 64, channels_last).
    """
    return F.relu(F.max_pool2d(F.conv2d(x, weight, bias, stride, padding), pool))


class ConvReluPool(nn.Module):
    """conv2d -> ReLU -> max_pool2d(pool): the unit a fused kernel replaces."""

    def __init__(self, in_channels, out_channels, kernel_size, padding=0, pool=2):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding)
        self.pool = pool
        self.op = conv_relu_pool_eager  # a plain attribute, so it never enters the state dict

    def forward(self, x):  # (B, Cin, H, W) -> (B, Cout, H', W')
        conv = self.conv
        return self.op(x, conv.weight, conv.bias, conv.stride[0], conv.padding[0], self.pool)

    def out_size(self, size):
        """Spatial size after this block for a square-or-not side of `size` pixels."""
        k, p = self.conv.kernel_size[0], self.conv.padding[0]
        return (size + 2 * p - k + 1) // self.pool


# airbench's BatchNorm: its "momentum 0.6" keeps 0.6 of the running statistics per step, which is
# PyTorch's momentum 0.4 (running = (1 - m) * running + m * batch). Runs of a few hundred steps
# need statistics that follow the weights quickly; eps 1e-12 is airbench's (only a channel that
# is constant over the whole batch comes near it, and its centred values are then 0 anyway).
BN_MOMENTUM = 0.4
BN_EPS = 1e-12


def batch_norm(channels):
    """BatchNorm2d with airbench's settings and a fixed scale of 1.

    The scale is frozen (requires_grad False) as in airbench: the conv or linear layer after the
    GELU absorbs any scale, so a learnable one only adds a redundant direction; the shift stays
    learnable because it moves where the GELU bends.
    """
    norm = nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
    norm.weight.requires_grad_(False)
    return norm


class ConvPoolBNBlock(nn.Module):
    """conv3x3 -> max_pool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU (airbench's ConvGroup).

    Pooling right after the first conv runs the second conv, both norms and both GELUs at a
    quarter of the pixels. Convs have no bias: the BatchNorm after each one removes it.
    (B, Cin, H, W) -> (B, Cout, H // 2, W // 2); every op has a channels_last kernel.
    """

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = batch_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = batch_norm(out_channels)

    def forward(self, x):
        x = F.max_pool2d(self.conv1(x), 2)  # (B, Cout, H // 2, W // 2)
        x = F.gelu(self.norm1(x))
        return F.gelu(self.norm2(self.conv2(x)))

    @staticmethod
    def out_size(size):
        return size // 2
