"""Building the network a reference names for a dataset, and proving it fits before any work.

Built-ins are sized to the data by design; torchvision models get the documented knobs (a ViT's
`image_size`, a 1-channel stem); user constructors get `num_classes`, `in_channels` and `in_shape`
by keyword where they take them, then `--model-args`. Every non-built-in model is then proven on a
probe batch (engine/models/probe.py): a model that cannot take the data, or whose output is not
(batch, classes), is one line naming the file, the line and the shapes.
"""

import contextlib
import inspect
import re
from pathlib import Path

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from engine.errors import EngineError, UsageError, first_line
from engine.models.logits import CHANNEL_NAMES, CLASS_COUNT_NAMES
from engine.models.probe import check_fits, code_file, line_of, probe_batch
from engine.models.reference import ModelRef, warn_once
from engine.models.user_code import load_code, torch_state_kept
from engine.models.spec import check_classes


def build(ref: ModelRef, in_shape, num_classes, batch=None) -> nn.Module:
    """The network `ref` names for images of `in_shape` (C, H, W) and `num_classes` classes, proven on
    a probe batch to take such images and give (batch, num_classes) logits (`check_fits`; `batch`: the
    training batch, where it is to train)."""
    check_classes(num_classes)
    if ref.kind == "builtin":
        from engine.models import build_model

        return build_model(ref.name, in_shape, num_classes)  # sized to the data by design
    if ref.kind == "torchvision":
        model = _torchvision(ref, in_shape, num_classes)
    else:
        model = _construct(load_code(ref), ref, in_shape, num_classes)
    check_fits(model, ref, in_shape, num_classes, probe_batch(batch), trains=batch is not None)
    return model


def _torchvision(ref, in_shape, num_classes):
    """torchvision.models.get_model(NAME, weights=None, num_classes=K, **model_args), fitted to the data where
    torchvision has a documented knob: a ViT's `image_size`, and a 1-channel stem (the first 3-channel
    conv is rebuilt for the data's channels, timm's `in_chans` convention)."""
    import torchvision.models

    channels, height, width = in_shape
    kwargs = dict(ref.args)
    if ref.name.startswith("vit_") and "image_size" not in kwargs:
        if height != width:
            raise UsageError(f"torchvision:{ref.name} takes square images, not {height}x{width}")
        kwargs["image_size"] = height
    if ref.name in ("googlenet", "inception_v3") and "init_weights" not in kwargs:
        kwargs["init_weights"] = True  # what None means today, said explicitly: no FutureWarning on every command
    kwargs.setdefault("num_classes", num_classes)  # --model-args wins, as for a user's constructor (check_fits
    try:  # then says, in one line, a count that is not the data's)
        model = torchvision.models.get_model(ref.name, weights=None, **kwargs)
    except (TypeError, ValueError, AssertionError) as error:
        fixed = re.search(r"got multiple values for (?:keyword )?argument '(\w+)'", str(error))
        if fixed and fixed.group(1) in ref.args:  # vit_b_16 sets num_layers itself, and the rest of its shape
            raise UsageError(f"--model-args {fixed.group(1)}: torchvision:{ref.name} sets {fixed.group(1)} itself, so "
                             f"it cannot be given; leave it out, or pick another torchvision:NAME of the family") from None
        raise UsageError(f"torchvision:{ref.name} cannot be built for {channels}x{height}x{width} images and "
                         f"{num_classes} classes: {first_line(error, 160)}") from None
    if channels != 3:
        stem = next(((parent, key, m) for parent in model.modules() for key, m in parent.named_children()
                     if isinstance(m, nn.Conv2d) and m.in_channels == 3), None)
        if stem is None:
            raise UsageError(f"torchvision:{ref.name} has no 3-channel first convolution to fit to {channels}-channel images")
        parent, key, conv = stem
        setattr(parent, key, nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                       conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode))
    return model


def _args_example(parameters, given, num_classes):
    """--model-args '{"width": VALUE}' for the required parameters not in `given`; one that names classes
    (a spelling the engine does not pass, e.g. `classes`) shows the data's class count."""
    missing = [name for name, p in parameters.items() if name not in given and p.default is p.empty
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)] or ["NAME"]
    fields = ", ".join(f'"{name}": {num_classes if "class" in name.lower() else "VALUE"}' for name in missing)
    counted = any("class" in name.lower() for name in missing)
    return f"--model-args '{{{fields}}}'" + (f" (for {num_classes} classes)" if counted else "")


def _construct(factory, ref, in_shape, num_classes):
    """factory(**kwargs): the class count, the channels (each by any name in CLASS_COUNT_NAMES and
    CHANNEL_NAMES) and in_shape by name where it takes them, then --model-args (which win)."""
    where = f"{ref.file}:{ref.name}"
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    offered = {**dict.fromkeys(CLASS_COUNT_NAMES, num_classes), **dict.fromkeys(CHANNEL_NAMES, in_shape[0]),
               "in_shape": tuple(in_shape)}
    accepts = signature.parameters if signature else {}
    kwargs = {k: v for k, v in offered.items() if k in accepts}
    kwargs.update(ref.args)
    args = []  # positional-only parameters (`def __init__(self, num_classes, /)`) the engine fills, in order
    for name, p in accepts.items():
        if p.kind is not p.POSITIONAL_ONLY or name not in kwargs:
            break
        args.append(kwargs.pop(name))
    if signature is not None:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as error:
            unknown = sorted(set(ref.args) - set(accepts)) if not any(
                p.kind is p.VAR_KEYWORD for p in accepts.values()) else []
            what = f"it takes no argument {', '.join(map(repr, unknown))}" if unknown else first_line(error)
            if not ref.args:  # nothing was given: the constructor wants what the engine cannot know
                raise UsageError(f"{ref.name}{signature} needs arguments the engine cannot give ({what}); pass them "
                                 f"as JSON: {_args_example(accepts, kwargs, num_classes)}") from None
            raise UsageError(f"--model-args do not fit {ref.name}{signature}: {what}") from None
    try:
        with torch_state_kept(ref.file, f"{ref.name} is called"), _host_rngs_seeded():
            model = factory(*args, **kwargs)
    except Exception as error:
        file = code_file(ref)
        raise EngineError(f"{where}({', '.join([*map(repr, args), *(f'{k}={v!r}' for k, v in kwargs.items())])}) raised "
                          f"{type(error).__name__}{line_of(error, file)}: {first_line(error, 160)}") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"--model {where}: calling {ref.name} gave a {type(model).__name__}, not an nn.Module")
    if isinstance(model, torch.jit.ScriptModule) and "_modules" not in vars(model):  # torch.jit.trace(net, x)
        raise UsageError(f"--model {where}: calling {ref.name} gave a torch.jit.trace-d module; return the nn.Module "
                         "itself (the engine compiles and exports it as it needs)")
    if "_modules" not in vars(model):  # nn.Module.__init__ never ran: no layers, no parameters, no .training
        raise UsageError(f"--model {where}: {type(model).__name__}.__init__ does not call super().__init__() "
                         "(nn.Module's) before it sets its layers; add it as the first line")
    return uncompiled(model, f"{Path(ref.file).name if ref.kind == 'file' else ref.file}:{ref.name} returns")


@contextlib.contextmanager
def _host_rngs_seeded():
    """Python's `random` and numpy's global generator seeded from torch's seed (the run's --seed: training
    and every rebuild of its checkpoint seed torch first) while a constructor runs, and put back after:
    a value drawn with them outside the state dict (`np.random.randn` into a persistent=False buffer) is
    the run's again in eval, export and resume, as one drawn with torch is, not another on each command."""
    import random

    import numpy as np

    kept = random.getstate(), np.random.get_state()
    random.seed(torch.initial_seed())
    np.random.seed(torch.initial_seed() % 2**32)
    try:
        yield
    finally:
        random.setstate(kept[0])
        np.random.set_state(kept[1])


def uncompiled(model: nn.Module, label: str) -> nn.Module:
    """`model` (that `label`, "nets.py:Net returns", gave) without the torch.compile its code applied
    (`torch.compile(net)`: the module under the wrapper; `net.compile()`: its compiled call dropped), said in one line: the wrapper's `_orig_mod.`
    keys would be the checkpoint's, and the engine compiles where --compile says (and where it pays),
    which the user's own compile overrode while the run said eager."""
    wrapped = type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module)
    if not wrapped and getattr(model, "_compiled_call_impl", None) is None:
        return model
    how = "torch.compile(...)" if wrapped else ".compile()"
    warn_once(("compiled", label), f"engine: warning: {label} a module already compiled ({how}); the engine "
                                   "trains and saves the module itself and compiles it where --compile says")
    model = model._orig_mod if wrapped else model
    model._compiled_call_impl = None
    return model


def check_rebuilds(model: nn.Module, ref: ModelRef, in_shape, num_classes):
    """A module the caller built (`train(model=...)`) must be what its checkpoint's reference rebuilds
    (`engine eval/export --model FILE.py:NAME`): its class called as the engine calls it, with
    --model-args. One line before any work if it is not, or if the class cannot be called so: the
    run's checkpoint could not be reloaded. The global RNG is left as it was."""
    label = ref.label if ref.kind != "file" else f"{Path(ref.file).name}:{ref.name}"
    hint = (f"; give the arguments you built it with as Config(model={ref.label!r}, model_args={{...}}), or name "
            "the code in Config(model=...) and leave train's model= out")
    if type(model).__module__.startswith("torchvision.models."):
        hint = "; name a torchvision model in Config(model='torchvision:NAME') and leave train's model= out"
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            code = type(model) if type(model).__module__ == "__main__" else load_code(ref)  # a script: not run again
            rebuilt = _construct(code, ref, in_shape, num_classes)
            if any(is_lazy(t) for t in (*rebuilt.parameters(), *rebuilt.buffers())):
                rebuilt.eval()(torch.zeros(1, *in_shape))
    except EngineError as error:  # UsageError too
        raise UsageError(f"train(model=...): the checkpoint could not rebuild your {label} from its class: "
                         f"{error}{hint}") from None
    except Exception as error:
        raise UsageError(f"train(model=...): the checkpoint could not rebuild your {label} from its class: "
                         f"{type(error).__name__}: {first_line(error, 160)}{hint}") from None
    mine, theirs = _shapes(model), _shapes(rebuilt)
    if mine != theirs:
        name = next((k for k in mine if mine[k] != theirs.get(k)), None) or next(k for k in theirs if k not in mine)
        built = f"{ref.name}({', '.join(f'{k}={v!r}' for k, v in ref.args.items())})"
        raise UsageError(f"train(model=...): your {label} is not what its checkpoint would rebuild, {built} for "
                         f"{num_classes} classes: {name} is {_shown(mine, name)} in yours, {_shown(theirs, name)} "
                         f"rebuilt{hint}")
    if _same_outputs(model, rebuilt, in_shape) is False:
        built = f"{ref.name}({', '.join(f'{k}={v!r}' for k, v in ref.args.items())})"
        drawn = _drawn_outside_state(code, ref, in_shape, num_classes)
        if drawn:
            raise UsageError(f"train(model=...): your {label} keeps {', '.join(drawn)} outside its state dict (a "
                             "persistent=False buffer or a tensor attribute), drawn at random by its constructor: "
                             "its checkpoint cannot hold them, and a rebuild draws others; register them with "
                             "register_buffer (persistent), or name the code in Config(model=...) and leave train's "
                             "model= out (the engine then builds it after seeding with --seed, as eval and export "
                             "rebuild it)")
        raise UsageError(f"train(model=...): your {label} computes other logits than its checkpoint would rebuild, "
                         f"{built}, with your weights in it: a constructor argument that changes no weight's shape "
                         f"(an activation, a scale?) would be lost{hint}")


def _same_outputs(model, rebuilt, in_shape):
    """Whether `model` and `rebuilt` (same parameter shapes), given `model`'s weights, compute the same
    logits on a seeded batch in evaluation mode; None where that cannot tell (a forward random in
    evaluation mode, one that fails). The caller's module and the global RNG are left as they were."""
    training = model.training
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(0)
            x = torch.rand(2, *in_shape)
            rebuilt.load_state_dict(model.state_dict())
            mine, again, theirs = model.eval()(x), model(x), rebuilt.eval()(x)
            if not torch.equal(mine, again):
                return None
            return torch.allclose(mine.float(), theirs.float(), rtol=1e-4, atol=1e-5)
    except Exception:
        return None
    finally:
        model.train(training)


def _unsaved_tensors(model):
    """{name: tensor} of what `model` holds outside its state dict: non-persistent buffers and plain
    tensor attributes of its modules."""
    saved = set(model.state_dict())
    found = {name: b for name, b in model.named_buffers() if name not in saved}
    for prefix, module in model.named_modules():
        for key, value in vars(module).items():
            if isinstance(value, torch.Tensor) and not key.startswith("_"):
                found[f"{prefix}.{key}" if prefix else key] = value
    return found


def _drawn_outside_state(code, ref, in_shape, num_classes):
    """The names of the tensors outside the state dict (_unsaved_tensors) that two constructions of
    the model under different seeds give differently; [] where it cannot tell."""
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            built = []
            for seed in (0, 1):
                torch.manual_seed(seed)
                built.append(_unsaved_tensors(_construct(code, ref, in_shape, num_classes)))
    except Exception:
        return []
    first, second = built
    return [name for name, t in first.items() if name in second and (t.shape != second[name].shape
                                                                     or not torch.equal(t, second[name]))]


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _shown(shapes, name):
    return "absent" if name not in shapes else str(shapes[name])
