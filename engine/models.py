"""The networks, by name: the tutorials' classic CNNs, built for a dataset's input shape.

Every conv -> ReLU -> maxpool stage is one `ConvReluPool` block whose op is a plain attribute,
so an optional fused kernel (kernels/conv_relu_pool.py) can replace it without touching the
parameters or their state-dict names.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import UsageError


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


@dataclass(frozen=True)
class ModelSpec:
    """A classic CNN: ConvReluPool stages, then flatten -> fc -> ReLU -> fc."""

    stages: tuple  # ((out_channels, kernel_size, padding), ...)
    hidden: int
    source: str
    reference_shape: tuple  # the (C, H, W) the tutorial trained on
    reference_params: int  # its parameter count at that shape, 10 classes


MODELS = {
    "cifar_cnn": ModelSpec(((64, 3, 0), (64, 3, 0), (128, 3, 0)), 256, "tutorial 001", (3, 32, 32), 246_474),
    "cifar_seq": ModelSpec(((32, 5, 2), (32, 5, 2), (64, 5, 2)), 64, "tutorial 000", (3, 32, 32), 145_578),
    "mnist_cnn": ModelSpec(((32, 3, 1), (64, 3, 1)), 256, "tutorial 002", (1, 28, 28), 824_458),
}


class ConvNet(nn.Module):
    """The tutorials' CNNs: `features` (ConvReluPool blocks), then a two-layer classifier."""

    def __init__(self, spec: ModelSpec, in_shape, num_classes):
        super().__init__()
        channels, height, width = in_shape
        blocks = []
        for out_channels, kernel_size, padding in spec.stages:
            blocks.append(ConvReluPool(channels, out_channels, kernel_size, padding))
            channels = out_channels
        self.features = nn.Sequential(*blocks)
        for block in blocks:
            height, width = block.out_size(height), block.out_size(width)
        self.feature_shape = (channels, height, width)
        self.fc1 = nn.Linear(channels * height * width, spec.hidden)
        self.fc2 = nn.Linear(spec.hidden, num_classes)

    def forward(self, x):  # (B, C, H, W) float -> (B, num_classes) logits
        x = self.features(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


def smallest_side(spec: ModelSpec):
    """The smallest square input that leaves every stage at least one pixel."""
    size = 1
    for _, kernel_size, padding in reversed(spec.stages):
        size = max(size * 2 + kernel_size - 1 - 2 * padding, 1)
    return size


def build_model(name, in_shape, num_classes) -> ConvNet:
    """The model `name`, with its first conv and flatten size fitted to `in_shape` (C, H, W)."""
    if name not in MODELS:
        raise UsageError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    spec = MODELS[name]
    channels, height, width = in_shape
    need = smallest_side(spec)
    if min(height, width) < need:
        raise UsageError(
            f"model {name} needs images of at least {need}x{need} pixels, but the data is "
            f"{channels}x{height}x{width}; choose a model with fewer pooling stages or larger images"
        )
    if num_classes < 2:
        raise UsageError(f"a classifier needs at least 2 classes, not {num_classes}")
    return ConvNet(spec, in_shape, num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def summarize(model: ConvNet, in_shape):
    """Rows of (layer, type, output shape, parameters) for one forward pass of a single image."""
    rows, hooks = [], []

    def record(name):
        def hook(module, _inputs, output):
            params = sum(p.numel() for p in module.parameters())
            rows.append((name, type(module).__name__, tuple(output.shape[1:]), params))

        return hook

    for name, module in model.named_children():
        targets = module.named_children() if isinstance(module, nn.Sequential) else [("", module)]
        for child_name, child in targets:
            full = f"{name}.{child_name}" if child_name else name
            hooks.append(child.register_forward_hook(record(full)))
    try:
        with torch.no_grad():
            model(torch.zeros(1, *in_shape))
    finally:
        for hook in hooks:
            hook.remove()
    return rows


def format_summary(name, model: ConvNet, in_shape) -> str:
    rows = summarize(model, in_shape)
    header = ("layer", "type", "output shape", "params")
    lines = [f"{name}: input {tuple(in_shape)}"]
    table = [header] + [(n, t, str(s), f"{p:,}") for n, t, s, p in rows]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    for row in table:
        lines.append("  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    lines.append(f"Total parameters: {count_parameters(model):,}")
    return "\n".join(lines)
