"""The optimizer and the learning-rate schedule.

The schedule is a pure function of the global step, so its whole state is one integer: a
checkpoint stores it as plain data and a resumed run continues on exactly the same curve. So is
the freezing of a parameter that trains for its first epochs only (fast_cifar94's whitening bias).
"""

import dataclasses
import math
import numbers

import torch
from torch import nn

from engine.config import Config
from engine.errors import UsageError
from engine.muon import Muon, is_filter

WARMUP = 0.2  # onecycle: share of the steps spent rising to the peak


def build_optimizer(cfg: Config, model, matmul_dtype=torch.float32):
    """The optimizer `cfg.optimizer` over all the model's parameters.

    --momentum is each method's first-moment knob: SGD's (Nesterov) momentum, Adam/AdamW's beta1,
    RMSprop's momentum (its squared-gradient average keeps torch's alpha 0.99). --weight-decay is
    decoupled for adamw and an L2 term added to the gradient for sgd, adam and rmsprop, so with
    adam and rmsprop it is scaled by the adaptive step like any gradient (as torch implements it).
    muon steps the conv filters with Muon at --muon-lr and --muon-momentum, and everything else with
    Nesterov SGD as sgd does, --bn-lr-scale then applying to every bias (engine/muon.py); its
    Newton-Schulz products run in `matmul_dtype` (the session passes bfloat16 for a bf16 run).
    `--bn-lr-scale` gives BatchNorm parameters their own group, and a model's epoch-limited
    parameters get theirs (see `parameter_groups`).
    Frozen parameters (requires_grad False) stay in the list, so the optimizer's state lines up
    with a checkpoint's whatever was frozen; they never get a gradient, and torch skips those.
    """
    params = parameter_groups(model, cfg.bn_lr_scale, cfg.weight_decay, biases=cfg.optimizer == "muon")
    lr, momentum, decay = cfg.lr, cfg.momentum, cfg.weight_decay
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(momentum, 0.999), weight_decay=decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(momentum, 0.999), weight_decay=decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=decay)
    if cfg.optimizer == "muon":
        return Muon(muon_groups(params, cfg.muon_lr / lr, cfg.muon_momentum, conv_filters(model)), lr=lr, momentum=momentum,
                    weight_decay=decay, matmul_dtype=matmul_dtype)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=decay)


def parameter_groups(model, bn_lr_scale=1.0, weight_decay=0.0, biases=False):
    """The model's parameters as the optimizer's groups: one group, or with `bn_lr_scale` != 1
    two, the BatchNorm parameters (with `biases`, every 1-D parameter too) getting lr x bn_lr_scale
    and weight decay / bn_lr_scale; then one group for each parameter the model limits to its first
    epochs (`model.epoch_limited()`, {parameter: epochs}), which carries `epochs` and stops there
    (see `set_lr`), at the scale and decay of the group it would otherwise be in.

    airbench trains BatchNorm biases at 64x the learning rate: a shift's gradient is small next
    to a conv weight's, and the GELU's bend moves only through it. Dividing its decay keeps each
    step's shrinkage (lr x decay) the same as every other parameter's. airbench94_muon trains its
    whitening bias at that rate too (`biases`, --optimizer muon); airbench94 at the base rate.
    Each group carries its `lr_scale`, which `set_lr` applies as the schedule moves. Group keys are
    saved with the optimizer's state, so a checkpoint keeps them.
    """
    limited = epoch_limits(model)
    in_norm = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
               for p in m.parameters(recurse=False)}

    def scaled(p):
        return bn_lr_scale != 1 and (id(p) in in_norm or (biases and p.dim() == 1))

    def keys(p):
        return {"lr_scale": bn_lr_scale, "weight_decay": weight_decay / bn_lr_scale} if scaled(p) else {"lr_scale": 1.0}

    apart = {id(p) for p in limited}
    own = [{"params": [p], **keys(p), "epochs": epochs} for p, epochs in limited.items()]
    norms = [p for p in model.parameters() if scaled(p) and id(p) not in apart]
    rest = [p for p in model.parameters() if not scaled(p) and id(p) not in apart]
    if not norms:
        return [{"params": rest, "lr_scale": 1.0}, *own]
    return [{"params": rest, "lr_scale": 1.0}, {"params": norms, **keys(norms[0])}, *own]


def bn_lr_scale_note(cfg: Config, model):
    """The one line that says --bn-lr-scale changes nothing for `model`, which has no trainable BatchNorm
    parameter (nor, under --optimizer muon, a trainable bias) for it to scale; None where it applies or is 1."""
    if cfg.bn_lr_scale == 1:
        return None
    groups = parameter_groups(model, cfg.bn_lr_scale, cfg.weight_decay, biases=cfg.optimizer == "muon")
    if any(g["lr_scale"] != 1 and p.requires_grad for g in groups for p in g["params"]):
        return None
    what = "BatchNorm parameter or bias" if cfg.optimizer == "muon" else "BatchNorm parameter (GroupNorm and LayerNorm are not BatchNorm)"
    return (f"--bn-lr-scale {cfg.bn_lr_scale:g}: {type(model).__name__} has no trainable {what} to scale, "
            "so every parameter trains at --lr")


def muon_flags_note(cfg: Config, model):
    """The one line that says --muon-lr / --muon-momentum change nothing for `model` under --optimizer
    muon, which has no trainable conv filter for Muon to step; None where they apply or are not given."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    given = [name for name in ("muon_lr", "muon_momentum") if getattr(cfg, name) != defaults[name]]
    filters = conv_filters(model)
    if cfg.optimizer != "muon" or not given or any(p.requires_grad and id(p) in filters for p in model.parameters()):
        return None
    return (f"{' and '.join('--' + name.replace('_', '-') for name in given)}: {type(model).__name__} has no "
            "trainable conv filter for Muon to step, so they change nothing (every parameter takes Nesterov SGD)")


def epoch_limits(model):
    """The model's `epoch_limited()` ({parameter: epochs}; {} without the method), checked: a dict whose
    keys are the model's own parameters (not their names) and whose values are epochs, 0 or more. Anything
    else is one line naming the method, not a traceback from the optimizer or the schedule."""
    if not hasattr(model, "epoch_limited"):
        return {}
    limited, where = model.epoch_limited(), f"{type(model).__name__}.epoch_limited()"
    if not isinstance(limited, dict):
        raise UsageError(f"{where} returns a {type(limited).__name__}; it must return a dict {{parameter: epochs}}")
    names = {id(p): name for name, p in model.named_parameters()}
    for p, epochs in limited.items():
        if id(p) not in names:
            what = repr(p) if isinstance(p, str) else f"a {type(p).__name__} of shape {tuple(getattr(p, 'shape', ()))}"
            raise UsageError(f"{where} names {what}, not one of the model's parameters: its keys are the parameters "
                             f"themselves ({{self.conv.bias: 3}}), not their names or buffers")
        if isinstance(epochs, bool) or not isinstance(epochs, numbers.Real) or not math.isfinite(epochs) or epochs < 0:
            raise UsageError(f"{where} gives {names[id(p)]} {epochs!r} epochs; it trains for a number of epochs, 0 or more")
    return limited


def conv_filters(model):
    """ids of the model's conv filters, what Muon steps: the parameters of 3 or more dimensions of its
    convolution modules (a weight, a pruned one's weight_orig, a parametrized one's originals). Other
    parameters of that many dimensions are not filters (ConvNeXt's layer scale (C, 1, 1), a ViT's
    position embedding and class token): Muon's rescaling to norm sqrt(rows) would replace their values."""
    return {id(p) for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd) for p in m.parameters() if is_filter(p)}


def muon_groups(groups, lr_scale, momentum, filter_ids):
    """`groups` (see parameter_groups) with each group's conv filters (`filter_ids`: conv_filters) moved
    to a group of their own that Muon steps (engine/muon.py) at lr x `lr_scale` (--muon-lr over --lr,
    so the schedule moves it in step) with `momentum`, keeping the group's other keys (an epoch limit).
    Frozen filters are moved too: they never get a gradient, and the state's layout stays the same
    whatever froze."""
    out = []
    for group in groups:
        filters = [p for p in group["params"] if id(p) in filter_ids]
        rest = [p for p in group["params"] if id(p) not in filter_ids]
        if rest or not filters:
            out.append({**group, "params": rest})
        if filters:
            out.append({**group, "params": filters, "lr_scale": group["lr_scale"] * lr_scale, "momentum": momentum,
                        "weight_decay": 0.0, "orthogonalize": True})
    return out


def lr_at(cfg: Config, step, total_steps):
    """The learning rate for `step` (0-based) of `total_steps`.

    onecycle: linear rise from lr/10 to lr over the first 20% of steps, then linear fall to 0;
    cosine: from lr down to 0 along half a cosine; linear: from lr straight down to 0 (airbench94_muon's);
    constant: lr throughout.
    """
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(step / max(total_steps, 1), 1.0)
    if cfg.schedule == "linear":
        return cfg.lr * (1 - progress)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    if progress < WARMUP:
        return cfg.lr * (0.1 + 0.9 * progress / WARMUP)
    return cfg.lr * (1 - progress) / (1 - WARMUP)


def stop_finished(model, epoch):
    """At the start of `epoch` (0-based), turn off the gradient of each epoch-limited parameter
    (`model.epoch_limited()`) whose epochs are over for the whole of it: from epoch ceil(limit) on.
    Returns whether any was turned off.

    `set_lr` already holds such a parameter still (lr 0 from its limit, to the step), so its value
    and every other parameter's are the same either way; what changes is that backward no longer
    computes the gradient nobody uses, as airbench94 sets requires_grad False for its whitening bias.
    In fast_cifar94 that is the gradient into the frozen stem (block 1's input gradient, the stem
    GELU's backward): 7% of a bf16 step at batch 1,024 on the 2-core Xeon (824-857 -> 771-797 ms).
    Only ever turns a gradient off, so a parameter frozen otherwise (--freeze) stays frozen; a resumed
    run calls it for the epoch it resumes in, so it computes exactly what the uninterrupted run did.
    """
    limited = epoch_limits(model)
    changed = False
    for p, epochs in limited.items():
        if p.requires_grad and epoch >= math.ceil(epochs):
            p.requires_grad_(False)
            changed = True
    return changed


def set_lr(optimizer, lr, epoch=None):
    """The schedule's `lr` for every group, times the group's `lr_scale` (see parameter_groups);
    0 for a group whose `epochs` are over at `epoch` (global step / steps per epoch, a float): its
    parameters then stay exactly as they are under every optimizer here (airbench94 freezes its
    whitening bias after 3 epochs). Without `epoch` no group stops."""
    for group in optimizer.param_groups:
        over = epoch is not None and group.get("epochs") is not None and epoch >= group["epochs"]
        group["lr"] = 0.0 if over else lr * group.get("lr_scale", 1.0)
