"""Starting a new run from existing weights (`--init-from`) and keeping some fixed (`--freeze`).

`--init-from` takes an engine checkpoint or a plain state dict (`.pt`/`.pth`, e.g. torchvision's
downloaded weights), always opened with `torch.load(weights_only=True)`. Every tensor must fit the
new model, except a classifier head whose class count differs, which keeps its fresh
initialisation (said in one line). `--resume` is a different thing: it continues a run exactly.
"""

from pathlib import Path

import torch
from torch import nn

from engine.errors import EngineError, UsageError

WRAPPERS = ("module.", "_orig_mod.")  # DistributedDataParallel's and torch.compile's key prefixes


def read_state_dict(path, say=None):
    """{name: tensor} from an engine checkpoint or a plain state dict (possibly under "state_dict" or
    "model"), with DDP/compile prefixes removed; one line for anything else. An engine checkpoint of
    an --ema run gives its weight average ("model_ema"), the weights its run evaluated, kept as best.pt
    and exported; `say` is told so."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"--init-from: {path} is a folder; name a weights file in it (a run's best.pt)")
    if not path.exists():
        raise EngineError(f"--init-from: no such file {path}")
    if not path.is_file():
        raise UsageError(f"--init-from: {path} is not a regular file (a device?); name a weights file")
    from engine.safe_load import read_weights_only

    try:
        loaded = read_weights_only(path, "weights file")
    except EngineError as error:
        raise EngineError(f"--init-from: {error}") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("model_ema"), dict):  # --ema: what the run evaluated
        loaded = loaded["model_ema"]
        if say:
            say(f"--init-from: {path} is an --ema run's checkpoint: starting from its weight average")
    for key in ("state_dict", "model", "model_state_dict"):  # "model": an engine checkpoint's weights
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not loaded or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise EngineError(f"--init-from: {path} holds no state dict of tensors")
    state = {}
    for key, value in loaded.items():
        for prefix in WRAPPERS:
            key = key.removeprefix(prefix)
        state[key] = value
    return state


WEIGHT_KEYS = ("weight", "weight_orig", "parametrizations.weight.original1", "parametrizations.weight.original")


def head_keys(model: nn.Module, state=None):
    """State-dict keys of the model's classifier head: every key of the last Linear (or 1x1 Conv2d)
    in the module order, its weight and bias, and what stands for them in a parametrized or pruned
    head (`parametrizations.weight.original0/1` of weight_norm, `weight_orig` and `weight_mask`).
    With `state` (the weights to load), the last such layer whose output count alone differs from
    state's is the head: a model may register its classifier before its features."""
    layers = [name for name, module in model.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d)) and name]
    last = layers[-1] if layers else None
    wanted = model.state_dict()
    for name in layers if state else ():
        key = next((f"{name}.{k}" for k in WEIGHT_KEYS if f"{name}.{k}" in wanted), None)
        ours, theirs = wanted.get(key), state.get(key)
        if (isinstance(ours, torch.Tensor) and isinstance(theirs, torch.Tensor) and ours.ndim == theirs.ndim
                and ours.shape[0] != theirs.shape[0] and ours.shape[1:] == theirs.shape[1:]):
            last = name  # another class count: this layer makes the logits
    return {key for key in wanted if key.startswith(f"{last}.")} if last else set()


def take_buffer_shapes(model: nn.Module, saved, keep=()):
    """Give each buffer of a freshly built `model` whose shape differs from its `saved` tensor's an
    empty tensor of the saved shape, for load_state_dict to fill: a forward may reshape a buffer
    (a memory of features that grows, a quantization observer's min/max that starts empty) or set
    one registered as None, so the trained model's differs from the built one's. Keys in `keep`
    stay as built (--init-from's head of another class count). Parameters are left as they are
    (checked)."""
    for prefix, module in model.named_modules():
        for key, buffer in module._buffers.items():
            name = f"{prefix}.{key}" if prefix else key
            held = saved.get(name)
            if name in keep or not isinstance(held, torch.Tensor) or key in module._non_persistent_buffers_set:
                continue
            if buffer is None:
                device = next((t.device for t in module.parameters()), held.device)
                module._buffers[key] = torch.empty(held.shape, dtype=held.dtype, device=device)
            elif buffer.shape != held.shape:
                module._buffers[key] = torch.empty(held.shape, dtype=buffer.dtype, device=buffer.device)


def init_from(model: nn.Module, path, say=print):
    """Load `path`'s weights into `model` (see the module docstring); returns the re-initialised keys."""
    state = read_state_dict(path, say)
    head = head_keys(model, state)
    take_buffer_shapes(model, state, keep=head)  # a head buffer (a pruning mask) sized for these classes stays
    wanted = model.state_dict()
    fresh, load = [], {}
    for key, tensor in wanted.items():
        if key not in state:
            raise EngineError(f"--init-from: {path} does not fit this model: it has no {key}")
        if tuple(state[key].shape) != tuple(tensor.shape):
            if key in head and state[key].shape[1:] == tensor.shape[1:]:  # the same head, another class count
                fresh.append(key)
                continue
            raise EngineError(f"--init-from: {path} does not fit this model: {key} is {tuple(state[key].shape)} "
                              f"there, {tuple(tensor.shape)} here")
        load[key] = state[key]
    extra = [key for key in state if key not in wanted]
    if extra:
        raise EngineError(f"--init-from: {path} does not fit this model: it has {extra[0]}, which the model lacks")
    model.load_state_dict(load, strict=False)
    note = ""
    if fresh:
        classes = tuple(state[fresh[0]].shape)[0]
        note = f"; {', '.join(fresh)} re-initialised ({classes} classes there, {wanted[fresh[0]].shape[0]} here)"
    say(f"Initialised from {path} ({len(load)} tensors{note})")
    return fresh


def freeze_prefixes(model: nn.Module, prefixes, say=print, fresh=(), loaded=True):
    """requires_grad False for every parameter under the comma-separated `prefixes` (a prefix matches
    a whole name or a dotted parent, `layer1` matching `layer1.0.conv1.weight` but not `layer10`).
    `fresh`: the keys --init-from re-initialised, which a frozen layer would keep random: refused.
    `loaded` False (no --init-from): the frozen values are those the model was built with, said so
    (a model's own code may load trained weights; otherwise they stay at their random init)."""
    names = [p.strip() for p in str(prefixes).split(",") if p.strip()]
    params = dict(model.named_parameters())
    for prefix in names:
        matched = [n for n in params if n == prefix or n.startswith(prefix + ".")]
        if not matched:
            tops = sorted({n.split(".")[0] for n in params})
            raise UsageError(f"--freeze {prefix}: no parameter is named {prefix} or under it; top-level names: "
                             f"{', '.join(tops[:12])}{', ...' if len(tops) > 12 else ''}")
        random = [n for n in matched if n in fresh]
        if random:
            raise UsageError(f"--freeze {prefix} would keep {', '.join(random)} at random values: --init-from "
                             "re-initialised them for this data's class count; freeze the layers before the head")
        for name in matched:
            params[name].requires_grad_(False)
    count = sum(p.numel() for p in params.values() if not p.requires_grad)
    if not any(p.requires_grad for p in params.values()):
        raise UsageError(f"--freeze {prefixes} leaves no parameter to train (all {count:,} would stay fixed); "
                         "freeze fewer layers")
    built = "" if loaded else " at the values the model was built with: no --init-from loaded weights into them"
    say(f"Frozen: {', '.join(names)} ({count:,} parameters stay fixed{built})")
