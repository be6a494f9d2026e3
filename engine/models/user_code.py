"""Importing the user code a reference names (`FILE.py:NAME`, `package.module:NAME`): once a process
per file digest, under a module name of the engine's own, with one line for every way it fails.

engine/models/reference.py says what a reference is and when code may be imported (`reopen`: only
what the person running the command named); this module does the import.
"""

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from dataclasses import replace
from pathlib import Path

from torch import nn

from engine.errors import EngineError, UsageError, first_line
from engine.models import neighbours
from engine.models.reference import USER_MODULE, ModelRef, warn_once


def load_code(ref: ModelRef):
    """The class or function a user reference names, imported once per process (and file digest);
    one line for every failure. Called before a run reads its data, so a bad --model costs nothing."""
    key = (ref.kind, ref.file, ref.sha256, ref.name)
    if key not in _loaded:
        _loaded[key] = _import(ref)
    source = ref.file if ref.kind == "file" else neighbours.module_file(ref.file)
    said = []
    if ref.kind == "module" and source and ref.sha256 and (now := neighbours.digest(source)) != ref.sha256:
        said.append(f"{source} (module {ref.file}) changed since the run was trained (sha256 {ref.sha256[:12]} -> "
                    f"{now[:12]})")  # a package.module's run (reopen keeps its digest), as reopen says a file's
    for line in [*said, *(neighbours.changes(source, ref.neighbours) if source else ())]:  # a run's, from reopen
        warn_once(line, f"engine: warning: {line}; loading it only if the weights fit")
    return _loaded[key]


def with_neighbours(ref: ModelRef) -> ModelRef:
    """`ref` with the digests of the files its code imported from beside it (after load_code), which
    the run's checkpoints keep; a package.module's with its source file's digest too, as a file's
    (so an edited module is said on eval, export and resume, and is another model to the caches)."""
    if ref.kind == "module" and (source := neighbours.module_file(ref.file)):
        return replace(ref, sha256=neighbours.digest(source), neighbours=neighbours.of_file(source))
    return replace(ref, neighbours=neighbours.of_file(ref.file)) if ref.kind == "file" else ref


_loaded = {}


def _import(ref: ModelRef):
    where = f"{ref.file}:{ref.name}"
    if ref.kind == "file":
        unique = f"{USER_MODULE}{hashlib.sha1(os.fsencode(ref.file)).hexdigest()[:10]}"  # any bytes a path holds
        spec = importlib.util.spec_from_file_location(unique, ref.file)
        module = importlib.util.module_from_spec(spec)
        writes, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ beside the user's file
        ours = _set_apart()  # before its folder is on sys.path: the engine's export and kernels packages
        sys.path.insert(0, str(Path(ref.file).parent))  # the file's own imports of its neighbours
        sys.modules[unique] = module  # dataclasses and pickling look the module up by name
        try:
            with torch_state_kept(ref.file):
                spec.loader.exec_module(module)
        except (Exception, SystemExit) as error:  # sys.exit() at its top level too: one line, not a silent stop
            sys.modules.pop(unique, None)
            package = isinstance(error, ImportError) and "no known parent package" in str(error)  # from . import x
            hint = (f" (a file of a package: name it as package.module:{ref.name}, with the folder above the package on "
                    "PYTHONPATH)") if package else ""
            raise EngineError(f"{ref.file} raised {type(error).__name__} on import{line_in(error, ref.file)}: "
                              f"{first_line(error, 160)}{hint}") from None
        finally:
            sys.dont_write_bytecode = writes
            _put_back(ours, unique)
            sys.path.remove(str(Path(ref.file).parent))
            if str(Path(ref.file).parent) not in sys.path:  # an import inside __init__ or forward (`from blocks
                sys.path.append(str(Path(ref.file).parent))  # import block`) finds it too; last, so that a
                # neighbour named like a library (copy.py, onnx.py) never shadows it for the engine
    else:
        try:
            with torch_state_kept(ref.file):
                module = importlib.import_module(ref.file)
        except ModuleNotFoundError as error:
            raise UsageError(f"--model {where}: no module named {error.name!r} (is it installed, or on PYTHONPATH?)") from None
        except Exception as error:
            raise EngineError(f"module {ref.file} raised {type(error).__name__} on import{line_in(error)}: "
                              f"{first_line(error, 160)}") from None
    target = module
    for part in ref.name.split("."):
        target = getattr(target, part, None)
    if target is None:
        found = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module)
                       and getattr(v, "__module__", None) == module.__name__)
        raise UsageError(f"--model {where}: {ref.name} is not defined there"
                         + (f" (nn.Module classes there: {', '.join(found)})" if found else ""))
    if not ((inspect.isclass(target) and issubclass(target, nn.Module)) or inspect.isfunction(target)):
        built = isinstance(target, nn.Module)  # a module made at import: the engine builds one per run, sized to the data
        hint = (f"; make it a function that builds it, def {ref.name}(num_classes): return {type(target).__name__}(...)"
                if built else "")
        raise UsageError(f"--model {where}: {ref.name} is not an nn.Module subclass or a function that returns one "
                         f"(it is of type {type(target).__name__}){hint}")
    owner = ref.name.rpartition(".")[0]
    cls = module
    for part in owner.split(".") if owner else ():
        cls = getattr(cls, part, None)
    if inspect.isfunction(target) and owner and inspect.isclass(cls) and issubclass(cls, nn.Module):
        raise UsageError(f"--model {where}: {ref.name} is a method of the class {owner}; name the class "
                         f"({Path(ref.file).name if ref.kind == 'file' else ref.file}:{owner}) or a function that "
                         "returns a module")
    return target


OWN_PACKAGES = ("export", "kernels")  # the engine's top-level packages besides engine itself


def _mine(name):
    return name.split(".")[0] in OWN_PACKAGES


def _set_apart():
    """The engine's export and kernels modules, imported (their packages: cheap) and taken out of
    sys.modules while a user's file is imported: its own export.py or kernels.py beside it (`from export
    import Head`) is then what it imports, where the engine's package answered ('cannot import name
    Head'), or the user's took the name and the engine's `export.onnx_export` was 'not a package'."""
    for package in OWN_PACKAGES:
        importlib.import_module(package)
    return {name: sys.modules.pop(name) for name in [n for n in sys.modules if _mine(n)]}


def _put_back(ours, unique):
    """After the import: the engine's modules under their names again; the user's own modules the import
    gave those names stay imported as `unique.NAME` (neighbours.of_file digests them)."""
    root = Path(__file__).resolve().parents[2]
    for name in [n for n in sys.modules if _mine(n)]:
        module = sys.modules.pop(name)
        source = getattr(module, "__file__", None)
        if module is not ours.get(name) and source and not Path(source).resolve().is_relative_to(root / name.split(".")[0]):
            sys.modules[f"{unique}.{name}"] = module
    sys.modules.update(ours)


@contextlib.contextmanager
def torch_state_kept(where, when="imported"):
    """Run the user's code (its import; `when`: its constructor) with torch's gradient mode and default
    dtype put back afterwards, each change said in one line: a file that turns gradients off at its top
    level (an inference script's `torch.set_grad_enabled(False)`) failed training's first backward with
    torch's traceback, and one that sets float64 as the default made the engine's float32 model float64.
    torch's thread count too: a script's torch.set_num_threads(1) ran the whole run on one core, unsaid.
    The code sees a command line of its own, sys.argv = [its file] (a script's top-level
    `parser.parse_args()` takes its defaults, not the engine's flags, which it refused as 'engine: error:
    unrecognized arguments'), and a working directory it changes (os.chdir) is put back, said in one
    line: the run's relative paths (runs/, --out) went to its folder."""
    import torch

    grad, dtype, threads = torch.is_grad_enabled(), torch.get_default_dtype(), torch.get_num_threads()
    argv, sys.argv = sys.argv, [str(where)]
    cwd = _cwd()
    try:
        yield
    finally:
        sys.argv = argv
        name = Path(where).name if os.sep in str(where) else where
        if cwd and _cwd() != cwd:
            moved, _ = _cwd(), os.chdir(cwd)
            warn_once(("cwd", where), f"engine: warning: {name} changes the working directory to {moved} when {when} "
                                      f"(os.chdir); the engine goes back to {cwd}, where the command's relative "
                                      "paths are")
        if torch.is_grad_enabled() != grad:
            torch.set_grad_enabled(grad)
            warn_once(("grad", where), f"engine: warning: {name} turns gradients {'on' if not grad else 'off'} when "
                                       f"{when} (torch.set_grad_enabled); the engine turns them back "
                                       f"{'on: training needs them' if grad else 'off'}")
        if torch.get_default_dtype() != dtype:
            changed, _ = torch.get_default_dtype(), torch.set_default_dtype(dtype)
            warn_once(("dtype", where), f"engine: warning: {name} sets torch's default dtype to {changed} when "
                                        f"{when}; the engine keeps {dtype} (it builds, trains and exports "
                                        "float32 models)")
        if torch.get_num_threads() != threads:  # torch.set_num_threads(1) of a benchmark script: a run 16x slower
            changed, _ = torch.get_num_threads(), torch.set_num_threads(threads)
            warn_once(("threads", where), f"engine: warning: {name} sets torch's threads to {changed} when {when} "
                                          f"(torch.set_num_threads); the engine keeps {threads} (OMP_NUM_THREADS "
                                          "sets them for a run)")


def _cwd():
    try:
        return os.getcwd()
    except OSError:  # a working directory deleted under the process
        return None


def line_in(error, file=None):
    """' (line N)' of the deepest frame of `error` in the user's `file`; with no file (a package.module
    on import) ' (FILE, line N)' of the deepest frame; '' where there is none (a built-in or torchvision
    model's forward: torch's own file and line mean nothing to its user). Where the error comes from a file
    `file` imports from its folder or below (blocks.py beside nets.py), that file's line too: ' (line 2;
    blocks.py, line 5)', not nets.py's line alone (or a SyntaxError's line number as if nets.py's)."""
    tb = traceback.extract_tb(error.__traceback__)
    frames = [f for f in tb if file is None or f.filename == file]
    beside = ""
    if file:
        folder = Path(file).resolve().parent
        deeper = tb[tb.index(frames[-1]) + 1:] if frames else tb
        where = [(f.filename, f.lineno) for f in deeper]
        if isinstance(error, SyntaxError) and error.filename and error.lineno:
            where.append((error.filename, error.lineno))
        inside = [(name, line) for name, line in where if name != file and Path(name).is_file()
                  and Path(name).resolve().is_relative_to(folder) and not {"site-packages", "dist-packages"} & set(Path(name).parts)]
        if inside:
            beside = f"{Path(inside[-1][0]).resolve().relative_to(folder)}, line {inside[-1][1]}"
    if isinstance(error, SyntaxError) and error.lineno and not beside:
        return f" (line {error.lineno})"
    if not frames:
        return f" ({beside})" if beside else ""
    if not file:
        return f" ({frames[-1].filename}, line {frames[-1].lineno})"
    return f" (line {frames[-1].lineno}; {beside})" if beside else f" (line {frames[-1].lineno})"
