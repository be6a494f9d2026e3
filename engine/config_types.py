"""The types of a Config's fields, checked from their annotations, so a Python caller's wrong type is
one UsageError naming the field (as the command line's parser does for a flag) instead of a
TypeError deep in a run, or a string "False" read as true.

The natural Python forms of a few values are taken and stored in the form the command line gives:
a path object for a path (`data`, `out`, ...); a whole number or (H, W) for `--image-size`; for
`--test-split` and `--val-split` a fraction 0 < x < 1 (0.1 is 10%), and for `--val-split` a
whole number of images (sklearn's test_size convention); seconds for `--save-every`; a dict for
`--model-args`; a list of prefixes for `--freeze`; numpy's scalars (np.int64, np.float64, np.str_)
for Python's, which a checkpoint's weights-only load could not read back.
"""

import json
import numbers
import os
import types
import typing

PATH_FIELDS = ("data", "data_dir", "cache_dir", "init_from", "out")
KIND_TEXT = {bool: "True or False", int: "a whole number", float: "a number", str: "a string"}


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
