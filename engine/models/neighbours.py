"""The .py files a user's model file imports from its own folder (`from layers import Block` beside
nets.py), by digest. A checkpoint keeps them in the model reference, so that an edit to layers.py
is said as an edit to nets.py is (engine.models.reference), not loaded in silence.

Only modules already imported are looked at: nothing here imports or runs anything.
"""

import hashlib
import sys
import sysconfig
from pathlib import Path


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _foreign(path: Path):
    """Whether `path` is not the user's: Python's own files, installed packages, this engine's packages."""
    roots = {Path(sysconfig.get_paths()[key]).resolve() for key in ("stdlib", "purelib", "platlib")}
    ours = Path(__file__).resolve().parents[2]
    roots |= {ours / package for package in ("engine", "export", "kernels")}
    return "site-packages" in path.parts or "dist-packages" in path.parts or any(path.is_relative_to(r) for r in roots)


def module_file(name) -> str | None:
    """The .py source of the imported module `name` (`package.module` a reference names), or None: not
    imported, a notebook's `__main__`, a compiled extension."""
    source = getattr(sys.modules.get(name), "__file__", None) if name != "__main__" else None
    return source if isinstance(source, str) and source.endswith(".py") and Path(source).is_file() else None


def of_file(file) -> dict:
    """{path relative to the folder of `file`: sha256} of each imported module whose .py file lies in
    that folder or below it, `file` itself and foreign files aside."""
    mine = Path(file).resolve()
    folder, found = mine.parent, {}
    for name, module in list(sys.modules.items()):
        if name in ("__main__", "__mp_main__"):  # the caller's script (`python train.py` beside nets.py; multiprocessing
            continue  # keeps it under both names), which nets.py does not import
        source = getattr(module, "__file__", None)
        if not isinstance(source, str) or not source.endswith(".py"):
            continue
        path = Path(source).resolve()
        if path != mine and path.is_relative_to(folder) and path.is_file() and not _foreign(path):
            found[path.relative_to(folder).as_posix()] = digest(path)
    return dict(sorted(found.items()))


def changes(file, saved: dict) -> list[str]:
    """For each of a run's `saved` neighbours of `file` (of_file when it trained), now changed or gone,
    a phrase naming it."""
    folder, said = Path(file).resolve().parent, []
    for relative, before in saved.items():
        path = folder / relative
        if not path.is_file():
            said.append(f"{path} (which {Path(file).name} imported when the run trained) is not there any more")
        elif (now := digest(path)) != before:
            said.append(f"{path} (imported by {Path(file).name}) changed since the run was trained (sha256 "
                        f"{before[:12]} -> {now[:12]})")
    return said


def check(values) -> str | None:
    """What is wrong with a stored {relative path: sha256} as plain data, or None."""
    if not isinstance(values, dict):
        return f"neighbours {values!r}"
    for relative, value in values.items():
        if (not isinstance(relative, str) or not relative.endswith(".py") or relative.startswith("/")
                or ".." in relative.split("/") or not isinstance(value, str)):
            return f"neighbour {relative!r}"
    return None


def of_model(model) -> str:
    """A sha256 of the code `model`'s forward runs: the source file of each of its modules' classes and,
    for the user's own files, the .py files beside them they imported (of_file); a traced module's
    generated code. An edited forward (or another file holding the same class) digests differently
    where the weights, and so the checkpoint, stay the same."""
    import inspect

    import torch

    files, parts = set(), set()
    for module in model.modules():
        if isinstance(module, torch.fx.GraphModule):
            parts.add(module.code)
        for klass in type(module).__mro__:
            try:
                source = inspect.getsourcefile(klass)
            except TypeError:  # a built-in class
                continue
            if source and Path(source).is_file():
                files.add(Path(source).resolve())
    for path in sorted(files):
        parts.add(f"{path}:{digest(path)}")
        if not _foreign(path):
            parts.update(f"{path.parent / relative}:{value}" for relative, value in of_file(path).items())
    return hashlib.sha256("\n".join(sorted(parts)).encode()).hexdigest()
