"""Finding the conv -> ReLU -> 2x2 max-pool runs of any model that the fused Triton kernel can
replace, and rewriting them without changing a state-dict key.

A run is three consecutive children of an `nn.Sequential` (the tutorials' `self.features =
nn.Sequential(nn.Conv2d(...), nn.ReLU(), nn.MaxPool2d(2), ...)`): `fuse` puts a `FusedConvReluPool`
holding the Conv2d's own `weight` and `bias` Parameters in the Conv2d's place and `nn.Identity` in
the ReLU's and the pool's, so `features.0.weight` stays `features.0.weight`. The engine's own
`ConvReluPool` blocks need no rewriting. Both hold their op as a plain attribute, which
engine.runtime.use_triton points at the kernel; nothing here imports Triton.
"""

import contextlib

from torch import nn

from engine.models.blocks import ConvReluPool, conv_relu_pool_eager
from kernels.envelope import MAX_KERNEL, MAX_PADDING, POOL, STRIDES  # the kernel's, per axis (no Triton import)


class FusedConvReluPool(nn.Module):
    """A Conv2d -> ReLU -> MaxPool2d(2) run as one op: (B, Cin, H, W) -> (B, Cout, H' // 2, W' // 2).

    It takes the Conv2d's place and holds the same Parameter objects under the same names (an
    optimizer built before or after fusing updates them alike) and keeps Conv2d's descriptive
    attributes for code that reads them."""

    def __init__(self, conv: nn.Conv2d, stride, padding, op=conv_relu_pool_eager):
        super().__init__()
        self.weight = conv.weight  # (Cout, Cin, KH, KW)
        self.register_parameter("bias", conv.bias)  # None stays out of the state dict, as in Conv2d
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size
        self.stride, self.padding = stride, padding  # (h, w) pairs
        self.op = op  # a plain attribute: never in the state dict

    def forward(self, x):
        return self.op(x, self.weight, self.bias, self.stride, self.padding, POOL)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}, pool={POOL}")


def find_runs(model: nn.Module, shape=None):
    """[(sequential, index, stride, padding)] for every run `fuse` would rewrite (`checked_runs`)."""
    return checked_runs(model, shape)[0]


def checked_runs(model: nn.Module, shape=None):
    """(runs, why): the runs `fuse` would rewrite, and one line saying which runs were left alone as
    fusing them would change what the model computes, or could not be checked ('' where none). Where
    a torch.fx trace cannot tell which maps the forward reads (`_tapped`), fusing is checked on a
    probe batch of `shape` (C, H, W) (engine.fusion_probe); without a shape those runs are left alone."""
    runs = _candidates(model)
    tapped = _tapped(model, runs) if runs else set()
    if tapped is None:
        from engine.fusion_probe import probe_runs

        return probe_runs(model, runs, shape, FusedConvReluPool)
    return [run for n, run in enumerate(runs) if n not in tapped], ""


def _candidates(model):
    runs = []
    for module in model.modules():
        if not isinstance(module, nn.Sequential) or type(module).forward is not nn.Sequential.forward:
            continue  # a Sequential subclass with its own forward may not call its children in order
        children = list(module)
        i = 0
        while i + 3 <= len(children):
            geometry = _run_geometry(*children[i:i + 3])
            if geometry:
                runs.append((module, i, *geometry))
                i += 3
            else:
                i += 1
    return runs


def _tapped(model, runs):
    """Which of `runs` (by position) the model's forward does not call as one chain: where something
    else reads the conv's or the ReLU's output (a forward that iterates the Sequential and keeps each
    ReLU's map), fusing would hand it the pooled map. Read
    from torch.fx traces of copies in training and in evaluation mode (a forward reading
    `self.training` may tap a map in one only); None for a model that does not trace, or whose own
    code a trace could change or hide a read in (engine.reorder's rule): a trace cannot say."""
    import copy

    import torch.fx

    from engine.reorder import _own_code_is_pure, _runs_more_than_forward

    if not _own_code_is_pure(model) or _runs_more_than_forward(model):
        return None
    try:
        graphs = [torch.fx.symbolic_trace(copy.deepcopy(model).train(mode)).graph for mode in (True, False)]
    except Exception:  # data-dependent control flow and the like
        return None
    names = {id(module): name for name, module in model.named_modules()}
    calls = {}
    for node in (node for graph in graphs for node in graph.nodes):
        if node.op == "call_module":
            calls.setdefault(node.target, []).append(node)

    def chain(node, then):  # the calls of `then` if node's output is read by one call of then[0] alone, and so
        users = list(node.users)  # on; else None (a shared nn.ReLU is fine)
        if not (len(users) == 1 and users[0].op == "call_module" and users[0].target == then[0]
                and users[0].args[:1] == (node,)):
            return None
        rest = chain(users[0], then[1:]) if len(then) > 1 else []
        return None if rest is None else [users[0], *rest]
    found, chained = [], set()
    for sequential, i, _, _ in runs:
        conv, *rest = (names[id(sequential[i + k])] for k in range(3))
        found.append((rest, [chain(node, rest) for node in calls.get(conv, [])]))
        chained.update(node for nodes in found[-1][1] if nodes for node in nodes)
    # a run's ReLU or pool called outside a run's chain (`self.features[1](y)`) would be an nn.Identity once fused
    return {n for n, (rest, chains) in enumerate(found) if None in chains
            or any(node not in chained for name in rest for node in calls.get(name, []))}


def fuse(model: nn.Module, op=conv_relu_pool_eager, shape=None, runs=None) -> int:
    """Rewrite every run `find_runs` finds (or `runs`, its answer) into a FusedConvReluPool running
    `op`; returns how many. The model computes the same function after as before (the eager op pools
    before the ReLU: engine.models.blocks.conv_relu_pool_eager says why that is exact)."""
    runs = find_runs(model, shape) if runs is None else runs
    for sequential, i, stride, padding in runs:
        sequential[i] = FusedConvReluPool(sequential[i], stride, padding, op)
        sequential[i + 1], sequential[i + 2] = nn.Identity(), nn.Identity()
    return len(runs)


def kernel_blocks(model: nn.Module) -> list:
    """The modules whose op the fused kernel replaces: ConvReluPool blocks and fused runs."""
    return [m for m in model.modules() if isinstance(m, (ConvReluPool, FusedConvReluPool))]


@contextlib.contextmanager
def eager_ops(model: nn.Module):
    """Run every kernel block's eager op inside the block (what engine.models.summary measures:
    a Triton kernel's work is invisible to torch's FLOP counter), then put their ops back."""
    blocks = [(block, block.op) for block in kernel_blocks(model)]
    try:
        for block, _ in blocks:
            block.op = conv_relu_pool_eager
        yield model
    finally:
        for block, op in blocks:
            block.op = op


def _run_geometry(conv, second, third):
    """(stride, padding) pairs if Conv2d, then ReLU and MaxPool2d(2) in either order (ReLU is
    monotone, so it commutes with max), lie inside the kernel's envelope; else None."""
    if {type(second), type(third)} != {nn.ReLU, nn.MaxPool2d} or type(conv) is not nn.Conv2d:
        return None  # exact types: a subclass may compute something else
    pool = second if type(second) is nn.MaxPool2d else third
    if any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in (conv, second, third)):
        return None  # fusing would skip a hook someone registered on one of them
    if not (_pair(pool.kernel_size) == _pair(pool.stride) == (POOL, POOL) and _pair(pool.padding) == (0, 0)
            and _pair(pool.dilation) == (1, 1) and not pool.ceil_mode and not pool.return_indices):
        return None
    if conv.groups != 1 or tuple(conv.dilation) != (1, 1) or conv.padding_mode != "zeros":
        return None
    stride, kernel = tuple(conv.stride), tuple(conv.kernel_size)
    padding = conv.padding
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same":  # symmetric only for odd kernels (stride is then 1, as Conv2d requires)
        if any(k % 2 == 0 for k in kernel):
            return None
        padding = tuple(k // 2 for k in kernel)
    padding = tuple(padding)
    if all(1 <= k <= MAX_KERNEL for k in kernel) and all(0 <= p <= MAX_PADDING for p in padding) \
            and all(s in STRIDES for s in stride):
        return stride, padding
    return None


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)
