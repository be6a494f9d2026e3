"""Where `engine export`'s files land, and when: each is written to a temporary beside its final path
and moved into place only when everything asked for (the fp32 file, and with --int8 its int8 file) is
written and checked, so a failed export leaves OUT and OUT.int8.onnx as they were: never a new fp32
file beside an earlier export's int8 one. A path that is a symbolic link is written through to the
link's target (atomically there), as `cp` and editors do: the link itself is kept.
"""

import contextlib
import os
import stat
from pathlib import Path

from engine.errors import EngineError, UsageError


def int8_path(out):
    """model.onnx -> model.int8.onnx"""
    out = Path(out)
    return out.with_name(f"{out.stem}.int8{out.suffix}")


def check_out(out):
    if not str(out).strip():
        raise UsageError("OUT is an empty path; give a file name ending in .onnx")
    out = Path(out)
    if out.name.lower() == ".onnx":  # a hidden file with no name: Path(".onnx").suffix is ""
        raise UsageError(f"OUT {out} has no name before .onnx; give a file name such as model.onnx")
    if out.suffix.lower() != ".onnx":
        raise UsageError(f"OUT {out} must end in .onnx")
    if out.is_dir():
        raise UsageError(f"OUT {out} is a directory; give a file name ending in .onnx")
    real = final_path(out)  # a symbolic link is written through to its target
    if not real.parent.is_dir():
        blocking = next((p for p in (real.parent, *real.parent.parents) if p.exists()), None)
        if blocking is not None and not blocking.is_dir():  # notes.txt/m.onnx
            raise EngineError(f"cannot write {out}: {blocking} is a file, not a folder")
        raise EngineError(f"cannot write {out}: folder {real.parent} does not exist")
    probe = real.parent / f".{real.name}.write-test{os.getpid()}"  # os.access says yes to root, even in /proc
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        why = error.strerror or error
        raise EngineError(f"cannot write {out}: folder {real.parent} is not writable ({why})") from None
    return out


def final_path(path):
    """`path`, or the file a symbolic link at `path` points to (its folder need not exist yet)."""
    path = Path(path)
    if not path.is_symlink():
        return path
    target = Path(os.path.realpath(path))
    if target.is_symlink():  # realpath stops where links loop
        raise EngineError(f"cannot write {path}: it is a symbolic link that loops ({path} -> {os.readlink(path)}); "
                          "remove the link or give another OUT")
    return target


def place(staged):
    """Move each (temporary, final) into place, in order; a file replaced keeps its permissions (a private
    0600 model stays private), as an editor's save keeps them."""
    for written, final in staged:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(written, stat.S_IMODE(os.stat(final).st_mode))
        os.replace(written, final)


def stage_int8(fp32_written, out, data, log):
    """Quantize the staged fp32 file into a staged int8 one; returns (its Int8Report naming OUT.int8.onnx,
    its temporary). On failure nothing is left."""
    from export.quantize import quantize_and_compare

    named = int8_path(out)
    final = final_path(named)
    written = final.with_name(f".{final.name}.staged{os.getpid()}")
    try:
        report = quantize_and_compare(fp32_written, written, data, log=log)
    except BaseException:
        written.unlink(missing_ok=True)
        raise
    report.path = named
    return report, (written, final)
