"""Checking on a probe batch which conv -> ReLU -> pool runs of a model can be fused, where a torch.fx
trace cannot say it (engine.fusion._tapped): a forward with data-dependent control flow, or one that
calls code of its own (a helper that applies a run's ReLU and then something else before its pool).

Each run is fused alone in copies of the model (their weights perturbed, so that a read a zero-initialised
gate switches off shows; with the eager op, which computes exactly what the run
does when the forward calls it as one chain), in evaluation and in training mode, and kept only where
the copies' outputs for one random batch match the unfused model's; then the runs kept are checked all
together. A forward that raises on the probe batch, or a model that cannot be copied, keeps every run
unfused. The probe exercises the branches its batch takes: a branch it does not take is not checked.
"""

import copy
import random

import numpy as np
import torch
import torch.utils._pytree as pytree
from torch import nn

PROBE_IMAGES = 2  # BatchNorm in training mode needs more than one value a channel


def probe_runs(model: nn.Module, runs, shape, fused_block):
    """(runs kept, why): `runs` (engine.fusion.find_runs's tuples) whose fusing leaves the model's
    output on a probe batch of `shape` (C, H, W) unchanged, and one line saying which were left alone
    and why ('' if none). `fused_block(conv, stride, padding)` builds the module a conv becomes."""
    label, names = type(model).__name__, {id(m): name for name, m in model.named_modules()}
    where = [f"{names[id(sequential)]}.{i}".lstrip(".") for sequential, i, _, _ in runs]
    if shape is None:
        return [], (f"{label}'s forward cannot be read by a torch.fx trace (control flow on tensor values, or code "
                    f"of its own), so its runs ({', '.join(where)}) are left unfused: no input shape to check "
                    "them on a probe batch")
    try:
        copies = [_perturbed(copy.deepcopy(model).train(mode)) for mode in (False, True)]
    except Exception as error:  # noqa: BLE001 - a lock, a file: nothing to probe with
        return [], (f"{label} cannot be copied to check its runs ({', '.join(where)}) ({type(error).__name__}), "
                    "so they are left unfused")
    parameter = next((p for p in model.parameters() if p.is_floating_point()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    x = torch.randn(PROBE_IMAGES, *shape, generator=torch.Generator().manual_seed(0))
    x = x.to(device, parameter.dtype if parameter is not None else torch.float32)
    try:
        wanted = [_forward(m, x) for m in copies]
    except Exception as error:  # noqa: BLE001 - whatever the user's forward raises
        return [], (f"{label}'s forward raised {type(error).__name__} on a probe batch of {'x'.join(map(str, shape))}, so "
                    f"its runs ({', '.join(where)}) are left unfused")
    kept = [n for n in range(len(runs)) if _same(copies, wanted, [runs[n]], names, x, fused_block)]
    if kept and not _same(copies, wanted, [runs[n] for n in kept], names, x, fused_block):
        kept = []
    if len(kept) == len(runs):
        return runs, ""
    left = [where[n] for n in range(len(runs)) if n not in kept]
    return [runs[n] for n in kept], (f"fusing {label}'s run{'s' if len(left) > 1 else ''} at {', '.join(left)} changed "
                                     "its output on a probe batch (its forward reads a conv's or ReLU's map itself, or "
                                     "computes something between them): left unfused")


def _perturbed(model):
    """`model` with noise added to each floating parameter: a read that the weights at hand switch off
    (a tap scaled by a zero-initialised gate, ReZero or a layer scale) shows on the probe all the same."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.is_floating_point() and parameter.numel():
                noise = torch.randn(parameter.shape, generator=generator).to(parameter.device, parameter.dtype)
                parameter.add_(noise * (0.1 + 0.1 * parameter.detach().float().pow(2).mean().sqrt().item()))
    return model


def _forward(model, x):
    """model(x) on a copy of x (a forward may scale its input in place) with the torch, Python and numpy
    random streams reseeded (the same dropout masks and draws for each copy) and put back after."""
    state, numpy_state = random.getstate(), np.random.get_state()
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(0)
            random.seed(0)
            np.random.seed(0)
            return model(x.clone())
    finally:
        random.setstate(state)
        np.random.set_state(numpy_state)


def _same(copies, wanted, runs, names, x, fused_block):
    """Whether each copy, with `runs` fused, gives its `wanted` output for `x`; the copies are put back."""
    for model, want in zip(copies, wanted, strict=True):
        swapped = []
        for sequential, i, stride, padding in runs:
            held = model.get_submodule(names[id(sequential)])
            swapped.append((held, i, held[i], held[i + 1], held[i + 2]))
            held[i] = fused_block(held[i], stride, padding)
            held[i + 1], held[i + 2] = nn.Identity(), nn.Identity()
        try:
            got = _forward(model, x)
        except Exception:  # noqa: BLE001 - fusing changed a shape the forward relies on
            return False
        finally:
            for held, i, *modules in swapped:
                held[i], held[i + 1], held[i + 2] = modules
        if not _close(got, want):
            return False
    return True


def _close(got, want):
    got, got_spec = pytree.tree_flatten(got)
    want, want_spec = pytree.tree_flatten(want)
    if got_spec != want_spec:
        return False
    for a, b in zip(got, want, strict=True):
        if isinstance(b, torch.Tensor):
            if not isinstance(a, torch.Tensor) or a.shape != b.shape or a.dtype != b.dtype:
                return False
            if b.is_floating_point():
                scale = 1 + b.detach().abs().nan_to_num().max().item() if b.numel() else 1
                if not torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5 * scale, equal_nan=True):
                    return False
            elif not torch.equal(a, b):
                return False
        elif not _equal(a, b):
            return False
    return True


def _equal(a, b):
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an object without a plain ==
        return a is b
