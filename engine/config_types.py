"""The types of a Config's fields, checked from their annotations, so a Python caller's wrong type is
one UsageError naming the field (as the command line's parser does for a flag) instead of a
TypeError deep in a run, or a string "False" read as true; then the ranges of its numbers
(`check_ranges`).

The natural Python forms of a few values are taken and stored in the form the command line gives:
a path object for a path (`data`, `out`, ...); a whole number or (H, W) for `--image-size`; for
`--test-split` and `--val-split` a fraction 0 < x < 1 (0.1 is 10%), and for `--val-split` a
whole number of images (sklearn's test_size convention); seconds for `--save-every`; a dict for
`--model-args`; a list of prefixes for `--freeze`; numpy's scalars (np.int64, np.float64, np.str_)
for Python's, which a checkpoint's weights-only load could not read back.

The command line's text forms of two values are read here too: a duration (`parse_duration`,
--save-every) and a CxHxW shape (`parse_shape`).
"""

import json
import math
import numbers
import os
import types
import typing

from engine.errors import UsageError

PATH_FIELDS = ("data", "data_dir", "cache_dir", "init_from", "out")
KIND_TEXT = {bool: "True or False", int: "a whole number", float: "a number", str: "a string"}
FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max, without importing torch to check a flag


def _plain(value):
    """json.dumps' fallback: a numpy scalar as its Python value, a numpy array as a list; else refused."""
    if hasattr(value, "tolist") and type(value).__module__ == "numpy":
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def normalise(config):
    """Rewrite the accepted Python forms of a value (see the module's docstring) as the CLI's."""
    import dataclasses

    for name in PATH_FIELDS:
        value = getattr(config, name)
        if isinstance(value, os.PathLike):
            setattr(config, name, os.fspath(value))
    size = config.image_size
    if _pair(size):
        config.image_size = f"{int(size[0])}x{int(size[1])}"
    elif _integral(size):
        config.image_size = str(int(size))
    if _integral(config.test_split):
        from engine.errors import UsageError

        raise UsageError(f"--test-split takes a percentage such as '10%' or a fraction such as 0.1, not "
                         f"{config.test_split!r}")
    for name in ("test_split", "val_split"):  # sklearn's convention: a float is a fraction, an int a count
        value = getattr(config, name)
        if _real(value) and not _integral(value) and 0 < float(value) < 1:
            setattr(config, name, f"{float(str(value)) * 100:g}%")
        elif _integral(value) and name == "val_split":
            setattr(config, name, str(int(value)))
    if _real(config.save_every):
        config.save_every = f"{float(str(config.save_every)):g}"
    if isinstance(config.freeze, (list, tuple)) and all(isinstance(p, str) for p in config.freeze):
        config.freeze = ",".join(config.freeze)
    if isinstance(config.model_args, dict):
        try:
            config.model_args = json.dumps(config.model_args, default=_plain)  # numpy's scalars and arrays as Python's
        except (TypeError, ValueError) as error:
            from engine.errors import UsageError

            raise UsageError(f"--model-args must be JSON-serialisable keyword arguments: {error}") from None
    for f in dataclasses.fields(config):  # numpy's scalars (np.int64(3), np.float64(0.1), np.str_) as Python's,
        value, kinds = getattr(config, f.name), _kinds(f.type)  # which a checkpoint's weights-only load reads
        if value is None or type(value) in (bool, int, float, str):
            continue
        if bool in kinds and _is_boolean(value):
            setattr(config, f.name, bool(value))
        elif int in kinds and _integral(value):
            setattr(config, f.name, int(value))
        elif float in kinds and _real(value):
            try:
                setattr(config, f.name, float(str(value)))  # np.float32(0.1) is 0.1, as typed, not 0.100000001
            except ValueError:
                setattr(config, f.name, float(value))
        elif str in kinds and isinstance(value, str):
            setattr(config, f.name, str(value))


def _integral(value):
    return isinstance(value, numbers.Integral) and not _is_boolean(value)


def _real(value):
    return isinstance(value, numbers.Real) and not _is_boolean(value)


def _pair(value):
    """(H, W) as a tuple, a list or an array of two whole numbers."""
    try:
        return not isinstance(value, str) and len(value) == 2 and all(_integral(v) for v in value)
    except TypeError:
        return False


FORMS = {  # fields whose Python forms are more than their annotation says
    "test_split": "a percentage such as '10%' or a fraction 0 < x < 1",
    "val_split": "a number of images, a percentage such as '10%', or a fraction 0 < x < 1",
    "image_size": "a side S, 'HxW' or (H, W), in whole pixels",
}


def check(config, flag):
    """Raise UsageError, naming the flag, for a field whose value is not of its annotated type, or for an
    empty path (`--out ''` would otherwise mean the default, and `''` the current folder)."""
    import dataclasses

    from engine.errors import UsageError

    for name in PATH_FIELDS:
        value = getattr(config, name)
        if isinstance(value, str) and not value.strip():
            raise UsageError(f"{flag(name)} is an empty path; name a file or folder (or leave the flag out)")

    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        kinds = _kinds(f.type)
        if value is None and type(None) in kinds:
            continue
        if not any(_fits(value, kind) for kind in kinds):
            wanted = FORMS.get(f.name) or " or ".join(KIND_TEXT.get(kind, kind.__name__) for kind in kinds
                                                      if kind is not type(None))
            maybe = " (or None)" if type(None) in kinds else ""
            raise UsageError(f"{flag(f.name)} must be {wanted}{maybe}, not {value!r}")


def _is_boolean(value):
    import numpy as np

    return isinstance(value, (bool, np.bool_))


def _kinds(annotation):
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return typing.get_args(annotation)
    return (annotation,)


def _fits(value, kind):
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_ranges(config, flag):
    """Raise UsageError, naming the flag, for a number of the right type that no run could use."""
    import dataclasses
    import math

    from engine.errors import UsageError

    positive = ("epochs", "batch_size", "eval_batch_size", "limit_train", "limit_test")
    for name in positive:
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UsageError(f"{flag(name)} must be a whole number of at least 1, not {value!r}")
    if not isinstance(config.seed, int) or not 0 <= config.seed < 2**63:
        raise UsageError(f"--seed must be a whole number from 0 to 2**63 - 1, not {config.seed!r}")
    for name in ("lr", "momentum", "weight_decay", "label_smoothing", "muon_lr", "muon_momentum"):
        if not math.isfinite(getattr(config, name)):
            raise UsageError(f"{flag(name)} must be a finite number, not {getattr(config, name)!r}")
    if not config.lr > 0:
        raise UsageError(f"--lr must be greater than 0, not {config.lr!r}")
    for name in ("momentum", "muon_momentum"):
        if not 0 <= getattr(config, name) < 1:
            raise UsageError(f"{flag(name)} must be in [0, 1), not {getattr(config, name)!r}")
    if not 0 < config.muon_lr <= 1:  # a step of lr x the filter's own scale: beyond 1 it overshoots the filter
        raise UsageError(f"--muon-lr is a step's size relative to each filter, 0 < LR <= 1, not {config.muon_lr!r}")
    if not (math.isfinite(config.bn_lr_scale) and config.bn_lr_scale > 0):
        raise UsageError(f"--bn-lr-scale must be a finite number greater than 0, not {config.bn_lr_scale!r}")
    for name, value in (("lr", config.lr * max(config.bn_lr_scale, 1.0)), ("weight_decay", config.weight_decay)):
        if value > FLOAT32_MAX:  # the optimizer's step takes it as a float32 factor: torch's overflow traceback
            scaled = f" x --bn-lr-scale {config.bn_lr_scale:g}" if name == "lr" and config.lr <= FLOAT32_MAX else ""
            raise UsageError(f"{flag(name)} {getattr(config, name):g}{scaled} is beyond float32's range (at most "
                             f"{FLOAT32_MAX:.4g}), which the optimizer's step computes in")
    if config.resized_crop is not None and not (math.isfinite(config.resized_crop) and 0 < config.resized_crop < 1):
        raise UsageError(f"--resized-crop is the smallest area fraction of a crop, 0 < MIN < 1, not {config.resized_crop!r}")
    if not isinstance(config.crop_padding, int) or config.crop_padding < 0:
        raise UsageError(f"--crop-padding must be a whole number of 0 or more, not {config.crop_padding!r}")
    if not config.weight_decay >= 0:
        raise UsageError(f"--weight-decay must be 0 or more, not {config.weight_decay!r}")
    if not 0 <= config.label_smoothing < 1:
        raise UsageError(f"--label-smoothing must be in [0, 1), not {config.label_smoothing!r}")
    if config.ema is not None and not (isinstance(config.ema, (int, float)) and math.isfinite(config.ema) and 0 < config.ema < 1):
        raise UsageError(f"--ema is the weight average's decay per step, 0 < DECAY < 1 (e.g. 0.99), not {config.ema!r}")
    if config.target_acc is not None and not (math.isfinite(config.target_acc) and 0 < config.target_acc <= 100):
        raise UsageError(f"--target-acc is a test accuracy in percent, 1 <= X <= 100, not {config.target_acc!r}")
    if config.target_acc is not None and config.target_acc < 1:  # below any classifier's chance: a fraction meant
        raise UsageError(f"--target-acc is a test accuracy in percent (90 for 90%), at least 1; {config.target_acc:g} "
                         f"would be {config.target_acc:g}%: for {config.target_acc * 100:g}% give {config.target_acc * 100:g}")
    if config.eval_every is not None and not (math.isfinite(config.eval_every) and config.eval_every > 0 and (
            config.eval_every <= 1 or float(config.eval_every).is_integer())):
        raise UsageError(f"--eval-every is a fraction of an epoch, 0 < X <= 1, or a whole number of epochs, "
                         f"not {config.eval_every!r}")
    if config.optimizer != "muon":  # read only by Muon: given with another optimizer they would change nothing
        defaults = {f.name: f.default for f in dataclasses.fields(config)}
        muon = [name for name in ("muon_lr", "muon_momentum") if getattr(config, name) != defaults[name]]
        if muon:
            raise UsageError(f"{' and '.join(flag(name) for name in muon)} set the conv filters' Muon step; they apply "
                             f"to --optimizer muon, not {config.optimizer} (drop them, or add --optimizer muon)")


def parse_duration(text):
    """Seconds in `30s`, `10m`, `1.5h` or a bare number of seconds; None for `off`."""
    text = str(text).strip().lower()
    if text in ("off", "none", "never"):
        return None
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], 1)
    try:
        seconds = float(text[:-1] if text[-1:] in "smh" else text) * scale
    except ValueError:
        seconds = float("nan")
    if not (math.isfinite(seconds) and seconds >= 0):
        raise UsageError(f"--save-every must be a duration such as 30s, 10m or 1h, or off; not {text!r}")
    return seconds


def parse_shape(text, name):
    """'3x32x32' -> [3, 32, 32], or a UsageError naming the flag."""
    try:
        shape = [int(v) for v in str(text).lower().split("x")]
    except ValueError:
        shape = []
    if len(shape) != 3 or min(shape) < 1:
        raise UsageError(f"{name} {text}: expected CxHxW with positive numbers, e.g. 3x32x32")
    return shape
