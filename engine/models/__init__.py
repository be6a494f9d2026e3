"""The networks, by name: `MODELS` maps each name to a spec that builds it for a dataset's input
shape; `build_model` checks the request.

classic.py holds the tutorials' nets, fast.py the airbench-style fast_cifar, blocks.py the blocks
they are made of (ConvReluPool is the unit the fused Triton kernel replaces), summary.py what
describes any built model (layer table, parameters, FLOPs), re-exported here.
"""

from torch import nn

from engine.errors import UsageError
from engine.models.blocks import ConvPoolBNBlock, ConvReluPool, conv_relu_pool_eager
from engine.models.classic import CLASSIC, ConvNet, ConvNetSpec, MLP, MLPSpec
from engine.models.fast import FAST, FastNet, FastSpec
from engine.models.spec import ModelSpec, check_classes
from engine.models.summary import Layer, count_parameters, format_summary, forward_flops, summarize, training_flops

__all__ = [
    "MODELS", "build_model", "count_parameters", "summarize", "format_summary", "forward_flops", "training_flops",
    "Layer", "smallest_side",
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
    check_classes(num_classes)
    return spec.build(tuple(in_shape), num_classes)
