"""The networks, by name: `MODELS` maps each name to a spec that builds it for a dataset's input
shape; `build_model` checks the request, and `summarize`/`forward_flops` describe a built model.

classic.py holds the tutorials' nets, fast.py the airbench-style fast_cifar, blocks.py the blocks
they are made of (ConvReluPool is the unit the fused Triton kernel replaces).
"""

import torch
from torch import nn

from engine.errors import UsageError
from engine.models.blocks import ConvPoolBNBlock, ConvReluPool, conv_relu_pool_eager
from engine.models.classic import CLASSIC, ConvNet, ConvNetSpec, MLP, MLPSpec
from engine.models.fast import FAST, FastNet, FastSpec
from engine.models.spec import ModelSpec

__all__ = [
    "MODELS", "build_model", "count_parameters", "summarize", "format_summary", "forward_flops", "layer_flops",
    "training_flops", "smallest_side",
    "ModelSpec", "ConvNetSpec", "MLPSpec", "FastSpec", "ConvNet", "MLP", "FastNet",
    "ConvReluPool", "ConvPoolBNBlock", "conv_relu_pool_eager",
]

MODELS: dict[str, ModelSpec] = {**CLASSIC, **FAST}


def smallest_side(spec: ModelSpec) -> int:
    return spec.smallest_side()


def build_model(name, in_shape, num_classes) -> nn.Module:
    """The model `name`, with its first layer and flatten size fitted to `in_shape` (C, H, W)."""
    if name not in MODELS:
        raise UsageError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    spec = MODELS[name]
    channels, height, width = in_shape
    need = spec.smallest_side()
    if min(height, width) < need:
        raise UsageError(
            f"model {name} needs images of at least {need}x{need} pixels, but the data is "
            f"{channels}x{height}x{width}; choose a model with fewer pooling stages or larger images"
        )
    if num_classes < 2:
        raise UsageError(f"a classifier needs at least 2 classes, not {num_classes}")
    return spec.build(tuple(in_shape), num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _probe(model: nn.Module, in_shape, hooks):
    """One no-grad forward of a zero image in eval mode (BatchNorm statistics stay untouched),
    with `hooks` [(module, hook)] attached for the duration; the model's mode is restored."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *in_shape))
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()


def summarize(model: nn.Module, in_shape):
    """Rows of (layer, type, output shape, parameters) for one forward pass of a single image."""
    rows, targets = [], []

    def record(name):
        def hook(module, _inputs, output):
            params = sum(p.numel() for p in module.parameters())
            rows.append((name, type(module).__name__, tuple(output.shape[1:]), params))

        return hook

    for name, module in model.named_children():
        children = module.named_children() if isinstance(module, nn.Sequential) else [("", module)]
        for child_name, child in children:
            full = f"{name}.{child_name}" if child_name else name
            targets.append((child, record(full)))
    _probe(model, in_shape, targets)
    return rows


def layer_flops(model: nn.Module, in_shape) -> list:
    """Forward FLOPs of each conv and linear layer for one image of `in_shape`, in execution order:
    2 x the multiply-accumulates (bias adds, activations, pools and norms are not counted; a few %)."""
    total = []

    def conv(module, _inputs, output):  # output (1, Cout, H', W'); each output reads Cin/groups*kh*kw
        kh, kw = module.kernel_size
        total.append(2 * output.numel() * module.in_channels // module.groups * kh * kw)

    def block(module, inputs, output):  # ConvReluPool calls its conv through `op`, not conv.forward
        c = module.conv
        (kh, kw), (ph, pw), (sh, sw) = c.kernel_size, c.padding, c.stride
        _, _, h, w = inputs[0].shape
        oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        total.append(2 * c.out_channels * oh * ow * c.in_channels // c.groups * kh * kw)

    def linear(module, _inputs, output):
        total.append(2 * output.numel() * module.in_features)

    hooks = []
    for module in model.modules():
        if isinstance(module, ConvReluPool):
            hooks.append((module, block))
        elif isinstance(module, nn.Conv2d):  # a ConvReluPool's own conv never runs forward(), so no double count
            hooks.append((module, conv))
        elif isinstance(module, nn.Linear):
            hooks.append((module, linear))
    _probe(model, in_shape, hooks)
    return total


def forward_flops(model: nn.Module, in_shape) -> int:
    """Forward FLOPs for one image of `in_shape` (see `layer_flops`)."""
    return sum(layer_flops(model, in_shape))


def training_flops(model: nn.Module, in_shape) -> int:
    """FLOPs of one training image: the forward, plus a backward that costs each layer its forward
    twice (weight gradient and input gradient), except that the first layer needs no input gradient."""
    layers = layer_flops(model, in_shape)
    return 3 * sum(layers) - layers[0]


def format_summary(name, model: nn.Module, in_shape) -> str:
    rows = summarize(model, in_shape)
    header = ("layer", "type", "output shape", "params")
    lines = [f"{name}: input {tuple(in_shape)}"]
    table = [header] + [(n, t, str(s), f"{p:,}") for n, t, s, p in rows]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    for row in table:
        lines.append("  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    lines.append(f"Total parameters: {count_parameters(model):,}")
    return "\n".join(lines)
