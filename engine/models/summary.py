"""Describing any nn.Module: its parameter count, a layer table (output shape, parameters and
forward FLOPs of each layer) and its FLOPs per image, forward and training.

FLOPs are measured, not estimated: the model runs on a zero image under
`torch.utils.flop_counter.FlopCounterMode`, which counts every convolution, matmul/linear and
attention op (2 FLOPs per multiply-add, backward ops included) whatever module or function
issues it. It does not count bias adds, norms, activations, pools, softmax, residual adds or
any other elementwise or reduction op (a few % of a CNN's work), nor work done outside ATen
(a Triton kernel's launch: fused modules run their eager op while measured, see `_measure`).
"""

import contextlib
import math
from typing import NamedTuple

import torch
from torch import nn

from engine.models.copying import buffers_of, restore_buffers

DEPTH = 2  # the layer table's rows: modules two levels down (resnet18's layer1.0), or leaves above that


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **_):
    """FLOPs of aten.convolution_backward, replacing torch's formula, which (torch 2.14) counts a
    grouped conv's weight gradient `groups` times over: mobilenet_v3_small trained at 20x its
    forward. Each gradient asked for (input, weight; the bias's is a sum) does the forward's
    multiply-adds: every weight element meets every output position of its group once."""
    # w_shape (Cout, Cin // groups, KH, KW); transposed: (Cin, Cout // groups, KH, KW), applied per input pixel
    forward = 2 * math.prod(x_shape if transposed else grad_out_shape) * math.prod(w_shape[1:])
    return forward * (int(output_mask[0]) + int(output_mask[1]))


class Layer(NamedTuple):
    """One row of the layer table."""

    name: str  # the module's path in the model (its state-dict prefix); "(model)" for the root
    type: str  # its class name; "Name (own)" for what a module holds or computes outside its children
    shape: tuple | None  # output shape without the batch (a tuple of shapes for several outputs); None: not run
    params: int  # parameters first held by this row (a shared parameter counts once, in its first row)
    flops: int  # forward FLOPs for one image (eval mode)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def summarize(model: nn.Module, in_shape, depth=DEPTH) -> list[Layer]:
    """The layer table of `model` for one image of `in_shape` (C, H, W), in definition order.

    Rows are the modules `depth` levels below the model, or leaves above that; a module opened
    into rows that holds parameters itself (a ViT's class token) or computes FLOPs outside its
    children (a functional matmul in its forward) gets its own "(own)" row, so the rows' parameters
    add up to `count_parameters(model)` and their FLOPs to `forward_flops(model, in_shape)`.
    """
    rows, opened = _rows(model, depth)
    opened_ids = {id(m) for m in opened}
    shapes, flops = {}, {}
    with _hookable(model, rows) as (runner, watched):
        _measure(runner, in_shape, train=False, watched=watched, shapes=shapes, flops=flops)
        for module in watched:  # a scripted module's figures, measured on the wrapper that called it
            if isinstance(module, _Scripted):
                for found in (shapes, flops):
                    if id(module) in found:
                        found[id(module.inner)] = found.pop(id(module))
    seen_params, table = set(), []

    def take(params):  # each parameter belongs to the first row that holds it
        fresh = [p for p in params if id(p) not in seen_params]
        seen_params.update(id(p) for p in fresh)
        return sum(p.numel() for p in fresh)

    def counted(module):  # FLOPs inside a module; a container that never runs (ModuleDict) holds its children's
        if id(module) in flops:
            return flops[id(module)]
        return sum(counted(child) for child in module.children())

    for name, module in rows:
        if id(module) in opened_ids:  # what an opened module holds and computes outside its children
            own = flops[id(module)] - sum(counted(c) for c in module.children()) if id(module) in flops else 0
            own_params = take(module.parameters(recurse=False))
            table.append(Layer(name, f"{type(module).__name__} (own)", None, own_params, own))
        else:
            table.append(Layer(name, type(module).__name__, shapes.get(id(module)), take(module.parameters()),
                               flops.get(id(module), 0)))
    return [row for row in table if not (row.type.endswith("(own)") and row.params == 0 and row.flops == 0)]


def forward_flops(model: nn.Module, in_shape) -> int:
    """FLOPs of one no-grad eval-mode forward of one image of `in_shape` (C, H, W)."""
    return _measure(model, in_shape, train=False)


def training_flops(model: nn.Module, in_shape) -> int:
    """FLOPs of one training image: a train-mode forward and the backward to every parameter that
    requires a gradient (none to the input, as in training, so the first layer computes no input
    gradient). BatchNorm statistics, other buffers, `.grad` and the RNG are left as they were."""
    return _measure(model, in_shape, train=True)


def format_summary(name, model: nn.Module, in_shape) -> str:
    """The layer table, then forward and training MFLOPs per image and, last, total parameters."""
    rows = summarize(model, in_shape)
    header = ("layer", "type", "output shape", "params", "MFLOPs")
    table = [header] + [(n, t, "-" if s is None else str(s), f"{p:,}", f"{f / 1e6:,.2f}") for n, t, s, p, f in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = [f"{name}: input {tuple(in_shape)}"]
    for row in table:
        lines.append("  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
    lines.append(f"Forward: {forward_flops(model, in_shape) / 1e6:,.2f} MFLOPs per image (eval mode)")
    lines.append(f"Training: {training_flops(model, in_shape) / 1e6:,.2f} MFLOPs per image (forward + backward)")
    lines.append("FLOPs: 2 per multiply-add of convolutions, matmuls and attention; norms, activations, pools "
                 "and bias adds are not counted")
    fixed = sum(p.numel() for p in model.parameters() if not p.requires_grad)  # frozen by the model's own code
    if fixed:  # the training FLOPs above leave their gradients out: say why
        lines.append(f"Trainable parameters: {count_parameters(model) - fixed:,} ({fixed:,} have requires_grad False)")
    lines.append(f"Total parameters: {count_parameters(model):,}")  # last: scripts read it there
    return "\n".join(lines)


def _rows(model, depth):
    """[(name, module)] in definition order, and the modules opened into rows (each of which is
    also listed, for its own parameters and FLOPs, just before its children)."""
    rows, opened, seen = [], [], set()

    def walk(name, module, level):
        if id(module) in seen:  # a module registered twice is one row, at its first place
            return
        seen.add(id(module))
        children = list(module.named_children())
        if level >= depth or not children or isinstance(module, torch.jit.ScriptModule):  # scripted: one row
            rows.append((name or "(model)", module))
            return
        opened.append(module)
        rows.append((name or "(model)", module))
        for child_name, child in children:
            walk(f"{name}.{child_name}" if name else child_name, child, level + 1)

    walk("", model, 0)
    return rows, opened


class _Scripted(nn.Module):
    """A plain module standing in for a scripted one (torch.jit.script), which takes no hooks, while
    the table is measured."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


@contextlib.contextmanager
def _hookable(model, rows):
    """(the model to run, the rows' modules to watch): a scripted model wrapped in a _Scripted one,
    each scripted module inside a plain parent swapped for one until the block ends (a scripted
    parent runs its children itself: they are not rows)."""
    swapped, watched = [], []
    runner = _Scripted(model) if isinstance(model, torch.jit.ScriptModule) else model
    for name, module in rows:
        parent_name, _, attribute = name.rpartition(".")
        parent = model.get_submodule(parent_name) if name != "(model)" else None
        if not isinstance(module, torch.jit.ScriptModule):
            watched.append(module)
        elif parent is None:
            watched.append(runner)
        elif not isinstance(parent, torch.jit.ScriptModule):
            wrapper = _Scripted(module)
            parent._modules[attribute] = wrapper
            swapped.append((parent, attribute, module))
            watched.append(wrapper)
    try:
        yield runner, watched
    finally:
        for parent, attribute, module in swapped:
            parent._modules[attribute] = module


def _measure(model, in_shape, train, watched=(), shapes=None, flops=None):
    """Total FLOPs of one image through `model` (train: forward + backward); optionally each
    module in `watched` records its output shape in `shapes` and its inclusive forward FLOPs in
    `flops` (both keyed by id). The model's mode, buffers, gradients and the RNG are restored."""
    from torch.utils.flop_counter import FlopCounterMode  # lazily: it imports triton, which must not load
    # before engine.runtime.use_triton has chosen Triton's interpreter (on CPU)

    from engine.fusion import eager_ops  # lazily: engine.fusion imports engine.models

    first = next(iter([*model.parameters(), *model.buffers()]), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    # Two images in train mode: BatchNorm needs more than one value per channel (resnet18's last
    # stage is 1x1 at 32x32). Every counted op's FLOPs are proportional to the batch, so the
    # count is halved exactly; eval mode needs only one.
    batch = 2 if train else 1
    x = torch.zeros(batch, *in_shape, device=device, dtype=dtype)  # (B, C, H, W)
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop})

    def enter(module, _inputs):  # a module's FLOPs: the counter's total after its forward less before
        flops[id(module)] = flops.get(id(module), 0) - counter.get_total_flops()

    def leave(module, _inputs, out):
        flops[id(module)] += counter.get_total_flops()
        shapes.setdefault(id(module), _shape(out))  # a module called twice keeps its first shape

    handles = [h for m in watched for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    buffers = buffers_of(model)
    grads = [(p, p.grad) for p in model.parameters()]
    training = model.training
    rng_devices = [device] if device.type == "cuda" else []
    try:
        with eager_ops(model), _eager(), torch.random.fork_rng(devices=rng_devices):
            model.train(train)
            with torch.set_grad_enabled(train), counter:
                out = model(x)
                leaves = [p for p in model.parameters() if p.requires_grad]
                outputs = [t for t in _tensors(out) if t.requires_grad]
                if train and leaves and outputs:  # backward(), not autograd.grad(), which the counter refuses
                    loss = sum(t.float().sum() for t in outputs)  # through a parametrization (weight_norm)
                    loss.backward()
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
        for p, grad in grads:  # .grad as it was
            p.grad = grad
        restore_buffers(model, buffers)
    return counter.get_total_flops() // batch


def _eager():
    """Run a model compiled in place (`model.compile()`) eagerly while it is measured: compiled
    code calls kernels the counter cannot see, and a batch of one would recompile it."""
    set_stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    return set_stance("force_eager") if set_stance else contextlib.nullcontext()


def _tensors(out):
    """The tensors in a forward's output: a tensor, or any nesting of tuples (named ones too),
    lists and dicts."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _tensors(item)]
    return []


def _shape(out):
    shapes = [tuple(t.shape[1:]) for t in _tensors(out)]
    return shapes[0] if len(shapes) == 1 else tuple(shapes) if shapes else None
