"""The types of a Config's fields, checked from their annotations, so a Python caller's wrong type is
one UsageError naming the field (as the command line's parser does for a flag) instead of a
TypeError deep in a run, or a string "False" read as true.

The natural Python forms of a few values are taken and stored in the form the command line gives:
a path object for a path (`data`, `out`, ...), a number for `--image-size`, `--test-split`,
`--val-split` and `--save-every`, (H, W) for `--image-size`, a dict for `--model-args`, a list
of prefixes for `--freeze`, and numpy's scalars (np.int64, np.float32) for numbers.
"""

import json
import numbers
import os
import types
import typing

PATH_FIELDS = ("data", "data_dir", "cache_dir", "init_from", "out")
NUMBER_AS_TEXT = ("image_size", "test_split", "val_split", "save_every")
KIND_TEXT = {bool: "True or False", int: "a whole number", float: "a number", str: "a string"}


def normalise(config):
    """Rewrite the accepted Python forms of a value (see the module's docstring) as the CLI's."""
    import dataclasses

    for f in dataclasses.fields(config):  # numpy's scalars (np.int64(3), np.float32(0.1)) as Python's
        value, kinds = getattr(config, f.name), _kinds(f.type)
        if isinstance(value, (bool, int, float, str)) or value is None:
            continue
        if bool in kinds and _is_boolean(value):
            setattr(config, f.name, bool(value))
        elif int in kinds and isinstance(value, numbers.Integral) and not _is_boolean(value):
            setattr(config, f.name, int(value))
        elif float in kinds and isinstance(value, numbers.Real) and not _is_boolean(value):
            try:
                setattr(config, f.name, float(str(value)))  # np.float32(0.1) is 0.1, as typed, not 0.100000001
            except ValueError:
                setattr(config, f.name, float(value))
    for name in PATH_FIELDS:
        value = getattr(config, name)
        if isinstance(value, os.PathLike):
            setattr(config, name, os.fspath(value))
    for name in NUMBER_AS_TEXT:
        value = getattr(config, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            setattr(config, name, str(value))
    size = config.image_size
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(_fits(v, int) for v in size):
        config.image_size = f"{size[0]}x{size[1]}"
    if isinstance(config.freeze, (list, tuple)) and all(isinstance(p, str) for p in config.freeze):
        config.freeze = ",".join(config.freeze)
    if isinstance(config.model_args, dict):
        try:
            config.model_args = json.dumps(config.model_args)
        except (TypeError, ValueError) as error:
            from engine.errors import UsageError

            raise UsageError(f"--model-args must be JSON-serialisable keyword arguments: {error}") from None


def check(config, flag):
    """Raise UsageError, naming the flag, for a field whose value is not of its annotated type."""
    import dataclasses

    from engine.errors import UsageError

    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        kinds = _kinds(f.type)
        if value is None and type(None) in kinds:
            continue
        if not any(_fits(value, kind) for kind in kinds):
            wanted = " or ".join(KIND_TEXT.get(kind, kind.__name__) for kind in kinds if kind is not type(None))
            maybe = " (or None)" if type(None) in kinds else ""
            raise UsageError(f"{flag(f.name)} must be {wanted}{maybe}, not {value!r}")


def _is_boolean(value):
    return type(value).__name__ in ("bool", "bool_")  # numpy's np.bool_ is no numbers.Integral, but be sure


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
