"""A model as a stored reference: what `--model` names, what a checkpoint keeps, and how both rebuild it.

Four forms: a built-in name (`cifar_cnn`), `torchvision:NAME`, `FILE.py:NAME` and
`package.module:NAME`. `ModelRef` is plain data (kind, name, file, sha256, args), so a checkpoint
holds it without a pickle, nanoGPT-style. Built-in and torchvision references rebuild by
themselves; user code is imported only when the person running the command names it
(`reopen`), and a checkpoint's reference is checked without importing anything (`from_dict`).
engine/models/user_code.py imports the code a user reference names; engine/models/build.py makes the
network a reference names for a dataset; engine/models/script.py reads a user's file without running it.
"""

import json
import keyword
import math
import os
import shlex
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from torch import nn

from engine.errors import EngineError, UsageError
from engine.models import neighbours
from engine.models.script import check_guarded, defined_names

KINDS = ("builtin", "torchvision", "file", "module")
USER_MODULE = "engine_user_"  # the module name a FILE.py is imported under (plus a digest of its path)


@dataclass(frozen=True)
class ModelRef:
    kind: str  # one of KINDS
    name: str  # the built-in or torchvision name, or the class/function NAME in the code
    file: str | None = None  # file: its absolute path; module: the dotted module path
    sha256: str | None = None  # file (and a module's .py): the source's digest when the run started
    args: dict = field(default_factory=dict)  # --model-args: constructor keyword arguments (JSON values)
    neighbours: dict = field(default_factory=dict)  # file: {relative path: sha256} of what it imports beside it

    @property
    def user_code(self):
        return self.kind in ("file", "module")

    @property
    def label(self):
        """How --model names it: cifar_cnn, torchvision:resnet18, /abs/nets.py:Net, pkg.mod:Net."""
        return {"builtin": self.name, "torchvision": f"torchvision:{self.name}"}.get(self.kind, f"{self.file}:{self.name}")

    def measured_as(self):
        """What a cached measurement of this model is keyed by: its name and args, and a file's code."""
        code = {"code": [self.sha256, self.neighbours]} if self.sha256 else {}  # an edited file: another model
        return {"model": self.label, "args": self.args, **code}

    def to_dict(self):
        values = asdict(self)
        if not self.neighbours:  # as checkpoints without the field hold it
            del values["neighbours"]
        return values

    @classmethod
    def from_dict(cls, values, source="the checkpoint"):
        """A checkpoint's stored reference, checked as data: nothing is imported. A reference that names
        anything but a built-in, a torchvision classifier, or a class/function in a .py file or a
        non-standard-library module is refused."""
        if not isinstance(values, dict) or set(values) - {"kind", "name", "file", "sha256", "args", "neighbours"}:
            raise EngineError(f"{source} holds a damaged model reference")
        ref = cls(values.get("kind"), values.get("name"), values.get("file"), values.get("sha256"), values.get("args") or {},
                  values.get("neighbours") or {})
        problem = _check(ref)
        if problem:
            raise EngineError(f"{source} names a model the engine will not load ({problem}); refusing it")
        return ref


def _identifier(text, dotted=False):
    parts = text.split(".") if dotted and isinstance(text, str) else [text]
    return all(isinstance(p, str) and p.isidentifier() and not keyword.iskeyword(p) for p in parts)


def _check(ref: ModelRef):
    """What is wrong with a reference as plain data, or None."""
    if not isinstance(ref.kind, str) or ref.kind not in KINDS:
        return f"kind {ref.kind!r}"
    if not isinstance(ref.args, dict):
        return f"model args {ref.args!r}"
    if problem := neighbours.check(ref.neighbours):
        return problem
    if not isinstance(ref.name, str) or not all(v is None or isinstance(v, str) for v in (ref.file, ref.sha256)):
        return f"name {ref.name!r}, file {ref.file!r}, sha256 {ref.sha256!r}"
    if ref.kind == "builtin":
        from engine.models import MODELS

        return None if ref.name in MODELS else f"no built-in model {ref.name!r}"
    if ref.kind == "torchvision":
        return None if ref.name in torchvision_names() else f"no torchvision classifier {ref.name!r}"
    if not _identifier(ref.name, dotted=True):
        return f"{ref.name!r} is not a Python name"
    if ref.kind == "file":
        ok = isinstance(ref.file, str) and ref.file.endswith(".py") and os.path.isabs(ref.file)
        return None if ok else f"{ref.file!r} is not the absolute path of a .py file"
    if not _identifier(ref.file, dotted=True):
        return f"{ref.file!r} is not a module path"
    if ref.file.split(".")[0] in sys.stdlib_module_names or ref.file.split(".")[0] in ("builtins", "torch"):
        return f"{ref.file}:{ref.name} is not model code"  # os:system, subprocess:run, torch.*: never a network
    return None


def torchvision_names():
    """Every classification model torchvision lists (not its detection or video models)."""
    import torchvision.models

    return set(torchvision.models.list_models(module=torchvision.models))


sha256_of = neighbours.digest


def parse_model(text, args=None) -> ModelRef:
    """`--model TEXT` (and `--model-args` JSON text) as a reference; checks the syntax, the file's
    existence and the names torchvision lists, but imports no user code."""
    text = str(text).strip()
    model_args = parse_args(args)
    head, sep, name = text.rpartition(":")
    if not sep:
        from engine.models import MODELS

        if text.endswith(".py") and Path(text).expanduser().is_file():  # the file, its class or function left out
            names = defined_names(text)
            raise UsageError(f"--model {text}: name the class or function in it that builds the network, --model "
                             f"{text}:NAME" + (f" (defined there: {', '.join(names[:8])})" if names else ""))
        if text not in MODELS:
            raise UsageError(f"unknown model {text!r}; choose one of: {', '.join(MODELS)}, or torchvision:NAME, "
                             "FILE.py:NAME or package.module:NAME")
        ref = ModelRef("builtin", text, args=model_args)
    elif head == "torchvision":
        if name not in torchvision_names():
            close = sorted(n for n in torchvision_names() if n.startswith(name[:4]))[:4] if name else []
            raise UsageError(f"torchvision has no classification model {name!r}"
                             + (f" (did you mean {', '.join(close)}?)" if close else "; see torchvision.models.list_models()"))
        ref = ModelRef("torchvision", name, args=model_args)
    elif not head.strip():
        raise UsageError(f"--model {text}: no file or module before ':' (give FILE.py:NAME or package.module:NAME)")
    elif head.endswith(".py") or os.sep in head or "/" in head or Path(head).expanduser().exists():
        path = Path(head).expanduser()
        if path.is_dir():
            raise UsageError(f"--model {text}: {head} is a folder, not a .py file")
        if not path.is_file():
            raise EngineError(f"--model {text}: no such file {head}")
        if not head.endswith(".py"):
            raise UsageError(f"--model {text}: {head} is not a .py file")
        ref = ModelRef("file", name, str(path.resolve()), sha256_of(path), model_args)
    else:
        ref = ModelRef("module", name, head, None, model_args)
    problem = _check(ref) if ref.user_code else None
    if problem:
        raise UsageError(f"--model {text}: {problem} (give FILE.py:NAME or package.module:NAME)")
    if ref.kind == "torchvision" and {"weights", "pretrained"} & set(model_args):
        raise UsageError(f"--model-args cannot set {ref.label}'s weights: torchvision models are built without them "
                         "(nothing is downloaded at run time); load downloaded weights with --init-from PATH (a state "
                         "dict .pth file)")
    if model_args and ref.kind == "builtin":
        raise UsageError(f"--model-args is for torchvision and user models; the built-in {text} takes none (from "
                         "Python with train(model=...), name the module's code too: Config(model='nets.py:Net', "
                         "model_args={...}))")
    return ref


def parse_args(text):
    """--model-args: a JSON object, or None/'' for none."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return {}
    if isinstance(text, dict):
        value = dict(text)
    else:
        try:
            value = json.loads(text, parse_constant=_refuse_constant)
        except ValueError as error:
            raise UsageError(f"--model-args must be a JSON object such as '{{\"width\": 64}}', not {text!r} ({error})") from None
        if not isinstance(value, dict):
            raise UsageError(f"--model-args must be a JSON object such as '{{\"width\": 64}}', not {text!r}")
    bad = _non_finite(value)
    if bad:  # JSON has no NaN: Python's json takes it, and the checkpoint's config.json would not be JSON
        raise UsageError(f"--model-args {bad!r} is {value[bad]!r}: give finite numbers (JSON has no NaN or Infinity, "
                         "and the run's config.json is JSON)")
    return value


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _non_finite(value, key=None):
    """The top-level key whose value holds a NaN or an infinity (in a list or object too), or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else key
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    return next((k for k in (_non_finite(v, key if key is not None else k) for k, v in items) if k is not None), None)


def _warn(line):
    print(line, file=sys.stderr)


_warned = set()  # (what, where to) said once a process: a resume reopens the run's code twice


def warn_once(key, line, warn=_warn):
    """`line` through `warn`, unless this process already said it for `key`."""
    if (key, warn) not in _warned:
        _warned.add((key, warn))
        warn(line)


def reopen(saved: ModelRef, given: ModelRef | None, source="the checkpoint", warn=_warn) -> ModelRef:
    """The reference to rebuild a checkpoint's model with: its own for built-in and torchvision
    models; for user code, the code named again on this command line (`given`), which must be the
    same class or function as the run's. Nothing is imported here."""
    if not saved.user_code:
        if given is not None and (given.kind, given.name) != (saved.kind, saved.name):
            raise UsageError(f"{source} holds {saved.label}, not {given.label}; leave --model out")
        return saved
    notebook = saved.kind == "module" and saved.file == "__main__"  # a class typed into a notebook: no file to match
    again = f"FILE.py:{saved.name} (the file that defines it)" if notebook else shlex.quote(saved.label)
    if given is None:
        if saved.kind == "file" and not os.path.exists(saved.file):  # moved or deleted since: naming it again fails
            raise UsageError(f"{source} was trained with {saved.label}, which no longer exists; name the file that "
                             f"defines {saved.name} now: --model FILE.py:{saved.name} (its weights load where they fit)")
        raise UsageError(f"{source} was trained with {saved.label}, user code the engine does not import by itself; "
                         f"name it again: --model {again}")
    if not given.user_code or given.name != saved.name or (saved.kind == "module" and given.file != saved.file and not notebook):
        raise UsageError(f"{source} was trained with {saved.label}, not {given.label}; pass --model {again}")
    if saved.kind == "file" and given.kind == "file" and saved.sha256 and given.sha256 != saved.sha256:
        what = "changed since the run was trained" if given.file == saved.file else f"is not the run's {saved.file}"
        warn_once((given.file, given.sha256), f"engine: warning: {given.file} {what} (sha256 {saved.sha256[:12]} -> "
                  f"{given.sha256[:12]}); loading it only if the weights fit", warn)
    kept = {"sha256": saved.sha256} if saved.kind == "module" == given.kind else {}  # load_code compares them
    return replace(given, args=saved.args, neighbours=saved.neighbours, **kept)


def reference_of(model: nn.Module, args=None) -> ModelRef:
    """The reference of a module built by the caller (`train(cfg, model=...)`): its class, in its .py
    file when it comes from a script (or from a file `--model` loaded), else in its module, with
    `args` (the constructor's keyword arguments, `--model-args`). A class typed into a notebook has no
    file: its checkpoint reloads with any code naming the same class. engine.models.build.check_rebuilds
    proves the reference rebuilds the same network."""
    cls = type(model)
    if "<locals>" in cls.__qualname__:
        raise UsageError(f"model class {cls.__qualname__} is defined inside a function; define it at the top level "
                         "of a file or module so a checkpoint can name it")
    if cls.__module__.split(".")[0] == "torch":  # nn.Sequential(...) built inline: no class of the user's to name
        raise UsageError(f"train(model=...): {cls.__module__}.{cls.__qualname__} is torch's own class, which cannot "
                         "name your network for its checkpoint; define it as a class of its own in a .py file (e.g. "
                         "class Net(nn.Sequential) whose __init__ adds the layers)")
    source = getattr(sys.modules.get(cls.__module__), "__file__", None)
    if cls.__module__ == "__main__" and source and source.endswith(".py"):
        check_guarded(source)
    from_file = cls.__module__ == "__main__" or cls.__module__.startswith(USER_MODULE) or _loose(cls.__module__, source)
    if from_file and source and source.endswith(".py"):
        return ModelRef("file", cls.__qualname__, str(Path(source).resolve()), sha256_of(source), dict(args or {}),
                        neighbours.of_file(source))
    source = neighbours.module_file(cls.__module__)  # a package's .py file: its digest, as a file's
    return ModelRef("module", cls.__qualname__, cls.__module__, source and sha256_of(source), dict(args or {}),
                    neighbours.of_file(source) if source else {})


def _loose(module, source):
    """Whether `module` is a user's file imported by its name (`from nets import Net`, nets.py beside the
    script): a top-level module that is no package and not installed. It is recorded as its file, which
    `--model nets.py:Net` names from anywhere (the command line does not import from the script's folder)."""
    if not source or "." in module or Path(source).name == "__init__.py":
        return False
    installed = {"site-packages", "dist-packages"} & set(Path(source).parts)
    return not installed and not Path(source).is_relative_to(Path(os.__file__).parent)  # nor the standard library
