"""Building the network a reference names for a dataset, and proving it fits before any work.

Built-ins are sized to the data by design; torchvision models get the documented knobs (a ViT's
`image_size`, a 1-channel stem); user constructors get `num_classes`, `in_channels` and `in_shape`
by keyword where they take them, then `--model-args`. Every non-built-in model then runs one
training-mode probe batch (`check_fits`): a model that cannot take the data, or whose output is not
(batch, classes), is one line naming the file, the line and the shapes.
"""

import inspect
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from engine.errors import EngineError, UsageError, first_line
from engine.models.copying import buffers_of, restore_buffers
from engine.models.logits import CLASS_COUNT_NAMES, check_logits
from engine.models.reference import ModelRef
from engine.models.user_code import line_in, load_code
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


CHANNEL_NAMES = ("in_channels", "in_chans", "n_channels", "num_channels", "input_channels")  # timm: in_chans


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
        model = factory(*args, **kwargs)
    except Exception as error:
        file = code_file(ref)
        raise EngineError(f"{where}({', '.join([*map(repr, args), *(f'{k}={v!r}' for k, v in kwargs.items())])}) raised "
                          f"{type(error).__name__}{_where(error, file)}: {first_line(error, 160)}") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"--model {where}: calling {ref.name} gave a {type(model).__name__}, not an nn.Module")
    if "_modules" not in vars(model):  # nn.Module.__init__ never ran: no layers, no parameters, no .training
        raise UsageError(f"--model {where}: {type(model).__name__}.__init__ does not call super().__init__() "
                         "(nn.Module's) before it sets its layers; add it as the first line")
    return model


def _where(error, file):
    """' (line N)' in a user model's `file`; '' for the built-in and torchvision models (no file)."""
    return line_in(error, file) if file else ""


def code_file(ref: ModelRef):
    """The source file of a user model's code (FILE.py, or package.module's file once imported), where
    an error's line is looked for; None for the built-in and torchvision models."""
    if ref.kind == "file":
        return ref.file
    module = sys.modules.get(ref.file) if ref.kind == "module" else None
    return getattr(module, "__file__", None)


PROBE_BATCH = 2  # BatchNorm in training mode needs more than one value per channel


def probe_batch(batch_size=None):
    """The probe's batch for a run of `batch_size` (None: not a training run): 2, or 1 for batches of 1."""
    return PROBE_BATCH if batch_size is None else min(batch_size, PROBE_BATCH)


def check_fits(model: nn.Module, ref: ModelRef, in_shape, num_classes, batch=PROBE_BATCH, built=False, trains=True):
    """A training-mode and an evaluation-mode forward of a probe batch (zeros, on CPU) before any work:
    the model must take (B, C, H, W) images and return (B, num_classes) float32 logits in both modes,
    and have a parameter to train. `batch`: the probe's size (1 for a run of --batch-size 1, where a
    BatchNorm1d cannot train). BatchNorm statistics and the global RNG are left as they were, so the
    probe changes nothing a run computes. `built`: the caller built the module (`train(model=...)`),
    so it, not the engine, chooses the number of classes. `trains`: a run will train it, so a
    training step's backward is probed too (not for an evaluation or an export)."""
    label = ref.label if ref.kind != "file" else f"{Path(ref.file).name}:{ref.name}"
    training, buffers, probe = model.training, None, torch.zeros(batch, *in_shape)
    outputs = {}
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            if any(is_lazy(t) for t in (*model.parameters(), *model.buffers())):
                model.eval()(probe)  # lazy modules (nn.LazyConv2d, ...) take their shapes; eval leaves statistics
            buffers = buffers_of(model)
            outputs["training"] = model.train()(probe)
            outputs["evaluation"] = model.eval()(probe)  # a forward may differ by mode (dropout, an `if self.training`)
    except Exception as error:
        file = code_file(ref)
        shape = "x".join(map(str, in_shape))
        mode = (" in evaluation mode" if outputs else " in training mode at --batch-size 1" if batch == 1 else "")
        small = any(words in str(error) for words in ("Kernel size can't be greater", "Calculated padded input size",
                                                      "Output size is too small"))
        hint = ("; the images are too small for this network (resize an image folder's with --image-size; summary "
                "takes --input-shape)" if small else "")
        kinds = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters() if p.dtype != torch.float32})
        if kinds and not small:  # model.double() or .half() in __init__: the images come as float32
            hint = (f"; its parameters are {' and '.join(kinds)}, and the engine feeds float32 images (build it in "
                    "float32: --amp chooses a faster precision where one measures faster)")
        raise UsageError(f"{label} cannot take {shape} images: its forward{mode} raised {type(error).__name__}"
                         f"{_where(error, file)}: {first_line(error, 160)}{hint}") from None
    finally:
        model.train(training)
        if buffers is not None:
            restore_buffers(model, buffers)
    for mode, output in outputs.items():
        check_logits(output, label, mode, batch, num_classes, ref, type(model) if built else None)
    if not any(p.requires_grad for p in model.parameters()):
        count = sum(p.numel() for p in model.parameters())
        held = f"all {count:,} have requires_grad False" if count else "it has none"
        raise UsageError(f"{label} has no parameter to train ({held}); a model needs at least one trainable parameter")
    if trains:
        check_backward(model, label, probe, code_file(ref))


def check_backward(model: nn.Module, label, probe, file):
    """A training step's backward of the probe batch, before any work: one line where it fails (an
    in-place op on a tensor autograd saved, a custom Function without a backward), which would
    otherwise stop the first step with autograd's traceback. Gradients, BatchNorm statistics and
    the global RNG are left as they were."""
    training, grads = model.training, [p.grad for p in model.parameters()]
    buffers = buffers_of(model)
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            output = model.train()(probe)
            if not output.requires_grad:  # check_fits found a trainable parameter: the logits must reach it
                raise UsageError(f"{label}'s logits depend on no trainable parameter (detached, or computed under "
                                 "torch.no_grad() in its forward?): training could not change them")
            output.float().sum().backward()
    except UsageError:
        raise
    except Exception as error:
        inplace = "modified by an inplace operation" in str(error)
        hint = "; write the in-place op it names (relu_, +=, mul_) out of place, as x = x.relu()" if inplace else ""
        reason = str(error).split(";")[0] if inplace else first_line(error, 200)
        raise UsageError(f"{label}: its backward (a training step's gradient) raised {type(error).__name__}"
                         f"{_where(error, file)}: {reason}{hint}") from None
    finally:
        model.train(training)
        with torch.no_grad():
            for p, grad in zip(model.parameters(), grads):
                p.grad = grad
        restore_buffers(model, buffers)


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


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _shown(shapes, name):
    return "absent" if name not in shapes else str(shapes[name])
