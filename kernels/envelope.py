"""What the fused conv2d -> ReLU -> max_pool2d(2) kernel accepts, and the shapes it gives.

`check` raises a ValueError naming the first argument outside the envelope that
kernels.conv_relu_pool's docstring states (the device is the kernel module's own check); the
shape helpers serve the launch, the backward (kernels.window), the custom ops (kernels.ops) and the
traffic model (kernels.traffic). Nothing here imports triton.
"""

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_KERNEL, MAX_PADDING, STRIDES, POOL = 7, 3, (1, 2), 2
INDEX_LIMIT = 2**31  # the kernel's offsets are int32; larger batches are split into launches


def pair(name, value):
    """An int or a pair of ints -> (h, w); anything else is a ValueError naming the argument."""
    both = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else None
    if both is None or len(both) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in both):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return both


def check(x, weight, bias, stride, padding, pool):
    """Raise ValueError naming the first argument outside the envelope; return (stride, padding) pairs."""
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if not (isinstance(t, torch.Tensor) or (name == "bias" and t is None)):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"weight must be 4-D (OC, C, KH, KW), got shape {tuple(weight.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"x.dtype {x.dtype} is not supported (float32, float16, bfloat16)")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            raise ValueError(f"{name}.dtype {t.dtype} differs from x.dtype {x.dtype}")
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    n, c, h, w = x.shape
    oc, wc, kh, kw = weight.shape
    if c == 0 or oc == 0:
        raise ValueError(f"x has {c} channels and weight {oc} output channels; both must be at least 1")
    if wc != c:
        raise ValueError(f"weight has {wc} input channels but x has {c} (grouped convolution is not supported)")
    if not (1 <= kh <= MAX_KERNEL and 1 <= kw <= MAX_KERNEL):
        raise ValueError(f"weight kernel size {kh}x{kw} is outside 1..{MAX_KERNEL}")
    if bias is not None and tuple(bias.shape) != (oc,):
        raise ValueError(f"bias must have shape ({oc},), got {tuple(bias.shape)}")
    stride, padding = pair("stride", stride), pair("padding", padding)
    if not all(s in STRIDES for s in stride):
        raise ValueError(f"stride {stride} is not supported (1 or 2)")
    if not all(0 <= p <= MAX_PADDING for p in padding):
        raise ValueError(f"padding {padding} is outside 0..{MAX_PADDING}")
    if pair("pool", pool) != (POOL, POOL):
        raise ValueError(f"pool {pool!r} is not supported (only 2: a 2x2 window with stride 2)")
    oh, ow = conv_size(h, w, kh, kw, stride, padding)
    if oh < POOL or ow < POOL:
        raise ValueError(f"x of {h}x{w} gives a {oh}x{ow} conv output, too small for a {POOL}x{POOL} pool")
    # int32 offsets: the batch is split into launches as needed (images_per_launch), but one image
    # of x or of the output, and the whole weight, must each fit
    if max(span(x[:1]), span(weight), oc * (oh // POOL) * (ow // POOL)) >= INDEX_LIMIT:
        raise ValueError(f"x {tuple(x.shape)} or weight {tuple(weight.shape)} is too large: one image and the "
                         f"weight must each span fewer than {INDEX_LIMIT} elements")
    return stride, padding


def autocast_args(x, weight, bias):
    """(x, weight, bias) cast to the autocast dtype where torch.autocast is on for x's device, as
    conv2d's would be; unchanged otherwise (and anything check() would refuse is left to it)."""
    if not (isinstance(x, torch.Tensor) and torch.is_autocast_enabled(x.device.type)):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(x.device.type)
    cast = lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.dtype in SUPPORTED_DTYPES else t  # noqa: E731
    return cast(x), cast(weight), cast(bias)


def span(t):
    """Elements from a tensor's first to its last element, plus one."""
    return sum((size - 1) * abs(st) for size, st in zip(t.shape, t.stride())) + 1


def conv_size(h, w, kh, kw, stride, padding):
    """(OH, OW) of the convolution, before the pool."""
    return (h + 2 * padding[0] - kh) // stride[0] + 1, (w + 2 * padding[1] - kw) // stride[1] + 1


def pooled_like(x, weight, stride, padding):
    """An empty (N, OC, PH, PW) output for x and weight, in x's dtype and layout."""
    n, _, h, w = x.shape
    oc, _, kh, kw = weight.shape
    oh, ow = conv_size(h, w, kh, kw, stride, padding)
    return torch.empty((n, oc, oh // POOL, ow // POOL), device=x.device, dtype=x.dtype, memory_format=memory_format(x))


def memory_format(x):
    """channels_last if x is (and is not also plain contiguous), as eager conv2d's output would be."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def images_per_launch(*tensors):
    """Images per launch so every int32 offset the kernel forms stays below INDEX_LIMIT."""
    images = tensors[0].shape[0]
    for t in tensors:
        if t.stride(0) > 0:
            images = min(images, (INDEX_LIMIT - span(t[:1])) // t.stride(0) + 1)
    return images
