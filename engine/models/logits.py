"""What a model's probe output must be: (batch, classes) float32 logits, and one line saying why not.

engine.models.probe runs the probe (`check_fits`) and calls `check_logits` on each mode's output. A
class count that is not the data's says what to change, by how the constructor takes its arguments:
the engine passes the count to a parameter named in CLASS_COUNT_NAMES, never into `**kwargs`.
"""

import inspect
import json
import re

import torch

from engine.errors import EngineError, UsageError
from engine.models.reference import ModelRef
from engine.models.user_code import load_code

CLASS_COUNT_NAMES = ("num_classes", "n_classes", "nclasses", "num_class", "num_labels")  # as model code spells it
CHANNEL_NAMES = ("in_channels", "in_chans", "n_channels", "num_channels", "input_channels")  # timm: in_chans


def check_logits(output, label, mode, batch, num_classes, ref: ModelRef, built=None):
    """One line for a probe's output that is not (batch, num_classes) float32 logits. `built`: the class
    of a module the caller built, whose hint is to build it for the data's classes."""
    if not isinstance(output, torch.Tensor):
        kind = type(output).__name__
        if isinstance(output, dict):  # e.g. {"logits": ..., "features": ...}
            hint = f"return the logits tensor itself, e.g. a wrapper whose forward returns model(x)[{next(iter(output), 'KEY')!r}]"
        elif output is None:
            hint = "does its forward end without a return?"
        elif not isinstance(output, (tuple, list)):
            hint = "return a tensor of shape (batch, classes)"
        elif ref.kind == "torchvision" or not output:
            hint = "an auxiliary-output model? for torchvision googlenet and inception_v3 pass --model-args '{\"aux_logits\": false}'"
        else:  # (logits, features), a namedtuple: the engine trains one tensor of logits
            first = f".{output._fields[0]}" if hasattr(output, "_fields") else "[0]"
            hint = f"return the logits tensor itself, e.g. a wrapper whose forward returns model(x){first}"
        raise UsageError(f"{label} returns {'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind} in {mode} mode, not a "
                         f"tensor of logits ({hint})")
    if tuple(output.shape) != (batch, num_classes) and built is not None:
        takes = "num_classes" in inspect.signature(built).parameters
        hint = f" (build it with {num_classes} outputs{f', e.g. {built.__name__}(num_classes={num_classes})' if takes else ''})"
        raise UsageError(f"{label} returns {tuple(output.shape)} for a batch of {batch}, not (batch, classes) = "
                         f"({batch}, {num_classes}) for {num_classes} classes{hint}")
    if tuple(output.shape) != (batch, num_classes):
        if output.ndim == 2 and output.shape[1] == num_classes:  # the classes right, the batch not
            hint = " (its forward must keep the batch dimension: one row of logits per image)"
        elif tuple(output.shape) == (batch, num_classes, 1, 1):  # a 1x1-conv head without the flatten after it
            hint = " (flatten it at the end of its forward: return x.flatten(1))"
        else:
            hint = _count_hint(ref, num_classes) if output.ndim == 2 else ""
        where = "" if mode == "training" else f" in {mode} mode"  # probed in training mode first: only then said
        raise UsageError(f"{label} returns {tuple(output.shape)} for a batch of {batch}{where}, not (batch, "
                         f"classes) = ({batch}, {num_classes}) for {num_classes} classes{hint}")
    if output.dtype != torch.float32:  # int logits cannot train; float64 ones would export a float64 output
        raise UsageError(f"{label} returns {str(output.dtype).removeprefix('torch.')} logits in {mode} mode; return "
                         "float32 logits (the loss, autocast and the exported ONNX model work in float32)")


def _count_hint(ref: ModelRef, num_classes):
    """' (what to change)' for 2-D logits of another class count than the data's `num_classes`."""
    signature = _signature(ref)
    parameters = signature.parameters if signature else {}
    named = [name for name in parameters if name in CLASS_COUNT_NAMES]  # what the engine fills in
    given = [name for name in CLASS_COUNT_NAMES if name in ref.args]  # what --model-args set (it wins)
    rest = next((name for name, p in parameters.items() if p.kind is p.VAR_KEYWORD), None)
    if rest is not None and not named:  # **kwargs alone: the engine passes nothing into it (it may go elsewhere)
        key = given[0] if given else "num_classes"
        if ref.args.get(key) == num_classes:
            return f" (--model-args gives {ref.name}{signature} {key} {num_classes}, which its output does not follow)"
        fixed = f"--model-args '{json.dumps({**ref.args, key: num_classes})}'"
        if given:
            return (f" (--model-args gives {ref.name}{signature} {key} {json.dumps(ref.args[key])}, not the data's "
                    f"{num_classes}: pass {fixed})")
        return (f" ({ref.name}{signature} takes {key} only through **{rest}, and the engine passes the class count "
                f"only to a parameter of that name: pass {fixed})")
    if given:
        return f" (--model-args sets {given[0]}; leave it out and the engine passes the data's)"
    if named:  # the engine passed the data's count, which the output does not follow
        return f" (the engine passed {named[0]}={num_classes}; its output does not follow it)"
    return " (give its constructor a num_classes argument: the engine passes it by name)"


def channels_hint(ref: ModelRef, error, channels):
    """'; what to change' for a forward that raised on images of `channels` channels because a layer
    takes another count (torch: 'expected input[...] to have 3 channels, but got 1'), or ''."""
    found = re.search(r"to have (\d+) channels, but got (\d+) channels", str(error))
    if not found or int(found.group(2)) != channels or not ref.user_code:
        return ""
    signature = _signature(ref)
    parameters = signature.parameters if signature else {}
    passed = next((name for name in (*CHANNEL_NAMES, "in_shape") if name in parameters), None)
    if passed in ref.args:
        return f"; --model-args sets {passed} {json.dumps(ref.args[passed])}: leave it out and the engine passes the data's"
    if passed:  # the engine gave the count: the layer that raised does not follow it
        return f"; the engine passed {passed} for {channels}-channel images, which that layer does not follow"
    return (f"; the images have {channels} channel{'s' if channels > 1 else ''} and the model takes "
            f"{found.group(1)}: give its constructor an in_channels argument (the engine passes it by name) and use it "
            "for the first layer")


def _signature(ref: ModelRef):
    """The signature of the constructor or function a user reference names (None where none can be read)."""
    if not ref.user_code:
        return None
    try:
        return inspect.signature(load_code(ref))
    except (EngineError, TypeError, ValueError):
        return None
