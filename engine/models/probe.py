"""Proving a built model fits the data before any work: a training-mode and an evaluation-mode
forward of a probe batch, then (for a run that trains it) float32 parameters, one to train and a
backward. Each failure is one line naming the model's file and line, the shapes and, where one
fits, the hint (images too small, a dtype, an in-place op); engine/models/build.py calls it.
"""

import inspect
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from engine.errors import UsageError, first_line
from engine.models.copying import buffers_of, restore_buffers
from engine.models.logits import channels_hint, check_logits
from engine.models.reference import ModelRef, warn_once
from engine.models.user_code import line_in

def line_of(error, file):
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
    check_mode_method(model, label)
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
        larger = not small and _takes_larger(model, in_shape)  # a window partition, a fixed grid: torch's own words
        runs = f", which runs on {larger}" if larger else ""
        small = small or bool(larger)
        hint = (f"; the images are too small for this network{runs} (resize an image folder's with --image-size; "
                "summary takes --input-shape)" if small else "")
        if batch == 1 and "more than 1 value per channel" in str(error):  # BatchNorm on one value: batch 2 trains
            hint += "; or train at a --batch-size of 2 or more (per process under --nproc)"
        hint = hint or channels_hint(ref, error, in_shape[0])  # a 3-channel model on grey images, or the reverse
        kinds = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters() if p.dtype != torch.float32})
        if kinds and not small:  # model.double() or .half() in __init__: the images come as float32
            hint = (f"; its parameters are {' and '.join(kinds)}, and the engine feeds float32 images (build it in "
                    "float32: --amp chooses a faster precision where one measures faster)")
        raise UsageError(f"{label} cannot take {shape} images: its forward{mode} raised {type(error).__name__}"
                         f"{line_of(error, file)}: {first_line(error, 160)}{hint}") from None
    finally:
        model.train(training)
        if buffers is not None:
            restore_buffers(model, buffers)
    for mode, output in outputs.items():
        check_logits(output, label, mode, batch, num_classes, ref, type(model) if built else None)
    if trains:
        _warn_probabilities(outputs["training"], label)
        check_trainable(model, label)
        check_backward(model, label, probe, code_file(ref))


def check_mode_method(model: nn.Module, label):
    """One line where the model's class overrides nn.Module.train with a method torch cannot call as
    train() and train(False) (model.eval() does): a training loop of its own named `train(self, loader)`,
    or `train(self)`, which stopped the probe with a traceback; and `eval` one it cannot call as eval()."""
    for name, calls, base in [("train", ((), (False,)), nn.Module.train), ("eval", ((),), nn.Module.eval)]:
        if getattr(type(model), name) is base:
            continue
        try:
            signature = inspect.signature(getattr(model, name))
            for args in calls:
                signature.bind(*args)
        except ValueError:
            continue
        except TypeError:
            called = " and ".join(f"{name}({', '.join(map(str, args))})" for args in calls)
            raise UsageError(f"{label} overrides nn.Module.{name} with {name}{signature}, which torch and the engine "
                             f"call as {called}{' (model.eval() does)' if name == 'train' else ''}: name that method "
                             f"otherwise ({'fit' if name == 'train' else 'evaluate'}), or take "
                             f"{'mode=True and return super().train(mode)' if name == 'train' else 'no argument'}") from None


def _warn_probabilities(output, label):
    """One line where a model to train returns probabilities (rows of non-negative values summing to
    1 on the probe): cross-entropy takes logits and applies the softmax itself, so a softmax in the
    forward trains, slowly, a different model. log_softmax is fine (cross-entropy gives the same)."""
    rows = output.detach().float()
    if rows.shape[1] > 1 and bool((rows >= 0).all()) and bool(torch.allclose(rows.sum(1), torch.ones(1), atol=1e-4)):
        warn_once(("probabilities", label), f"engine: warning: {label} returns probabilities (each row sums to 1: a softmax at "
                  "the end of its forward?); the loss, cross-entropy, takes logits and applies the softmax itself: "
                  "return the scores before it (or log_softmax) to train as intended")


def check_trainable(model: nn.Module, label):
    """A model a run will train: float32 parameters (the export runs float32, and --amp picks a
    faster precision by measurement), at least one of them trainable."""
    hidden = _unregistered(model)
    if hidden:  # self.blocks = [nn.Conv2d(...), ...]: the optimizer, .to(device) and the state dict never see them
        raise UsageError(f"{label} keeps {hidden} where nn.Module does not register them: their parameters would "
                         "not train, move to the device or be saved; hold them in nn.ModuleList (nn.ModuleDict for "
                         "a dict, nn.ParameterList for parameters)")
    state = model.state_dict()
    odd = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None) if isinstance(state, dict) else ""
    if odd is not None:  # get_extra_state, or an overridden state_dict: every checkpoint written would be unreadable
        what = (f"{odd!r} of type {type(state[odd]).__name__}" + (" (get_extra_state)" if odd.endswith("_extra_state") else "")
                if odd else f"a {type(state).__name__}, not a dict,")
        raise UsageError(f"{label}'s state_dict() holds {what}, not a tensor; the engine's checkpoints keep tensors "
                         "only (loaded weights-only): keep that state in a registered buffer")
    kinds = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters() if p.dtype != torch.float32})
    if kinds:  # self.double() in __init__, with a forward casting back: it would train, then not export
        raise UsageError(f"{label}'s parameters are {' and '.join(kinds)}; the engine trains float32 models and "
                         "exports them as float32 (build it in float32: --amp chooses a faster precision where one "
                         "measures faster)")
    if not any(p.requires_grad for p in model.parameters()):
        count = sum(p.numel() for p in model.parameters())
        held = f"all {count:,} have requires_grad False" if count else "it has none"
        raise UsageError(f"{label} has no parameter to train ({held}); a model needs at least one trainable parameter")


def _unregistered(model: nn.Module):
    """'Conv2d, Conv2d in the plain list blocks' for the first attribute of `model`'s modules that holds
    modules with parameters (or parameters) in a plain list, tuple or dict, which the model's own
    parameters do not include; None where there is none. A list of registered modules (`self.stages
    = [self.layer1, self.layer2]`) or of modules without parameters (`[nn.ReLU()]`) is fine."""
    known = {id(t) for t in (*model.modules(), *model.parameters())}
    for prefix, module in model.named_modules():
        for key, value in vars(module).items():
            if key.startswith("_") or not isinstance(value, (list, tuple, dict)):
                continue
            items = list(value.values() if isinstance(value, dict) else value)
            hidden = [type(v).__name__ for v in items if id(v) not in known and (
                isinstance(v, nn.Parameter) or isinstance(v, nn.Module) and any(True for _ in v.parameters()))]
            if hidden:
                kind = type(value).__name__
                return f"{', '.join(hidden)} in the plain {kind} {prefix + '.' if prefix else ''}{key}"
    return None


def _takes_larger(model: nn.Module, in_shape, side=224):
    """The larger shape ('CxHxW images', each side at least `side`) on which a forward that failed on
    `in_shape` images runs, in evaluation mode, or None: then the images were too small for it,
    whatever torch's words. Nothing is tried for images that large already; the RNG and the
    BatchNorm statistics are left as they were."""
    channels, height, width = in_shape
    if height >= side and width >= side:
        return None
    shape = (channels, max(height, side), max(width, side))
    training, buffers = model.training, buffers_of(model)
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.eval()(torch.zeros(PROBE_BATCH, *shape))
        return "x".join(map(str, shape)) + " images"
    except Exception:
        return None
    finally:
        model.train(training)
        restore_buffers(model, buffers)


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
                         f"{line_of(error, file)}: {reason}{hint}") from None
    finally:
        model.train(training)
        with torch.no_grad():
            for p, grad in zip(model.parameters(), grads):
                p.grad = grad
        restore_buffers(model, buffers)
