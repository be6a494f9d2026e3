"""Copies of a model: one to measure on or to average into (`copy.deepcopy`, made to work for the
modules users build, and one line where it cannot), and of its buffers, put back after a probe.

torch.nn.utils.prune keeps a pruned `weight` as a plain attribute computed from `weight_orig` and
`weight_mask` (recomputed by its hook before each forward): not a graph leaf, which deepcopy refuses.
It is copied detached. A `torch.jit.script`-ed submodule deep-copies into parameters that are not
leaves, which no optimizer or average can use: said, naming what needed the copy.
"""

import copy

import torch
from torch import nn

from engine.errors import UsageError, first_line


def duplicate(model: nn.Module, purpose: str) -> nn.Module:
    """A deep copy of `model` whose parameters are leaves; UsageError naming `purpose` (what needs
    the copy: "--ema's average") where there is none."""
    memo = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    try:
        copied = copy.deepcopy(model, memo)
    except Exception as error:  # noqa: BLE001 - a module holding something deepcopy cannot copy (a lock, a file)
        raise UsageError(f"{purpose} needs a copy of {type(model).__name__}, and copy.deepcopy could not make one "
                         f"({type(error).__name__}: {first_line(error, 120)}); keep locks, files and other things "
                         "deepcopy cannot copy out of the module's attributes") from None
    if not all(p.is_leaf for p in copied.parameters()):
        scripted = any(isinstance(m, torch.jit.ScriptModule) for m in model.modules())
        why = "a torch.jit.script-ed submodule's copied parameters are not leaves; script nothing in __init__" if scripted else "its copy's parameters are not leaves"
        raise UsageError(f"{purpose} needs a copy of {type(model).__name__} that trains, and copy.deepcopy does not "
                         f"make one ({why})")
    return copied


def buffers_of(model: nn.Module):
    """{name: a copy} of every buffer slot of `model`, None for one registered as None."""
    return {f"{prefix}{'.' if prefix else ''}{key}": None if b is None else b.detach().clone()
            for prefix, module in model.named_modules() for key, b in module._buffers.items()}


def restore_buffers(model: nn.Module, saved):
    """Put back the buffers `buffers_of` saved: in place where a probe left their shape (BatchNorm's
    statistics), else the saved tensor itself, or None, in their slot; a forward may grow a buffer
    (a memory of features), set one registered as None, or shape one that starts empty (a
    quantization observer's min/max)."""
    with torch.no_grad():
        for prefix, module in model.named_modules():
            for key, now in list(module._buffers.items()):
                name = f"{prefix}{'.' if prefix else ''}{key}"
                if name not in saved:  # registered by the forward itself
                    del module._buffers[key]
                elif now is not None and saved[name] is not None and now.shape == saved[name].shape and now.dtype == saved[name].dtype:
                    now.copy_(saved[name])
                else:
                    module._buffers[key] = saved[name]
