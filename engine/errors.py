"""The kinds of failure the command line reports as one line, with its exit code.

Library code raises these; `engine.cli` prints `engine: <message>` on stderr and exits with
`exit_code`, without a traceback, as it says an exception from a user's model code
(`user_code_line`). Anything else is a bug and keeps its traceback. Under `engine
train --nproc N` the ranks' lines are said once (`say_error`, `rank_errors`).
"""

import os
import re
import sys
from pathlib import Path

RANK_ERRORS_ENV = "ENGINE_RANK_ERRORS"  # set by `--nproc`'s launcher: the folder each failing rank leaves its line in


class EngineError(Exception):
    """A problem with the environment or the inputs on disk (exit 1)."""

    exit_code = 1


class UsageError(EngineError):
    """A bad argument: a name, a number or a combination of flags (exit 2)."""

    exit_code = 2


class Interrupted(KeyboardInterrupt):
    """Ctrl-C: what was completed is saved (exit 130). A KeyboardInterrupt, not an Exception, so a
    Python caller's `except Exception` (a sweep going on past a failed run) does not swallow Ctrl-C."""

    exit_code = 130


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colour codes, which torch's exporter puts in its messages


def first_line(error, limit=200):
    """The first non-empty line of an exception's message (or its type's name), at most `limit` long:
    libraries' messages can run to pages, and an error here is one line."""
    lines = [line.strip() for line in ANSI.sub("", str(error)).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:limit]


def user_code_line(error):
    """One line for an exception raised in a user's own code (a model file's forward, its constructor),
    named by the innermost frame outside Python, its installed packages and this project's packages;
    None where no such frame is in the traceback (then it is a bug here, and keeps its traceback)."""
    import sysconfig
    import traceback

    ours = Path(__file__).resolve().parents[1]
    library = [str(Path(p).resolve()) for p in {sysconfig.get_paths()[k] for k in ("stdlib", "purelib", "platlib")}]
    library += [str(ours / package) for package in ("engine", "export", "kernels")]
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        where = str(Path(frame.filename).resolve())
        if frame.filename.startswith("<") or any(where == root or where.startswith(root + os.sep) for root in library):
            continue
        return (f"the model's code raised {type(error).__name__} ({frame.filename}, line {frame.lineno}, in "
                f"{frame.name}): {first_line(error)}")
    return None


def root_cause(error):
    """The innermost exception `error` was raised from (its __cause__ or __context__ chain): where a
    library wraps the reason in pages of advice, the reason."""
    seen = {id(error)}
    while (inner := error.__cause__ or error.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        error = inner
    return error


def trace_failure(error):
    """One line for why torch.export could not trace a model (ahead-of-time inference, ONNX export):
    the innermost reason, and for the common one what it means in the user's code."""
    said = ANSI.sub("", str(root_cause(error)))
    line = first_line(said)
    if "data-dependent" in line:
        line += " - the forward branches on a tensor's value (an `if` on the data), which torch.export cannot trace"
        call = re.search(r'The following call raised this error:\s*File "([^"]+)", line (\d+), in \w+\n\s*(.*)', said)
        if call:  # torch.export names the model's line that branched
            line += f" ({Path(call.group(1)).name}, line {call.group(2)}: {call.group(3).strip()})"
    return line


def one_line(message):
    """`message` as one line: a newline, tab or other control character (in a file or folder name the
    message quotes, such as `bad\\nname.png`) escaped as Python writes it, so it cannot break the line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message))


def say_error(message):
    """Print `engine: error: <message>` on stderr. Under `--nproc`'s launcher every rank leaves the
    message in its folder and only rank 0 prints it: the ranks of one command mostly fail alike (the
    same bad data), and the launcher adds a rank's line only where it differs (`rank_errors`)."""
    message, folder, rank = one_line(message), os.environ.get(RANK_ERRORS_ENV), os.environ.get("RANK")
    if folder and rank is not None:
        try:
            Path(folder, f"rank-{int(rank)}").write_text(message)
        except (OSError, ValueError):
            folder = None  # could not leave it: say it here
        if folder and rank != "0":
            return
    print(f"engine: error: {message}", file=sys.stderr, flush=True)


def rank_errors(folder):
    """The lines of the ranks whose message differs from rank 0's, as '<rank>: <message>' (see say_error)."""
    said = {}
    for path in Path(folder).glob("rank-*"):
        try:
            said[int(path.name.removeprefix("rank-"))] = path.read_text()
        except (OSError, ValueError):
            continue
    return [f"rank {rank}: {message}" for rank, message in sorted(said.items()) if rank and message != said.get(0)]
