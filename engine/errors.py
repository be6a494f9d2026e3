"""The two kinds of failure the command line reports as one line, with its exit code.

Library code raises these; `engine.cli` prints `engine: <message>` on stderr and exits with
`exit_code`, without a traceback. Anything else is a bug and keeps its traceback.
"""

import re


class EngineError(Exception):
    """A problem with the environment or the inputs on disk (exit 1)."""

    exit_code = 1


class UsageError(EngineError):
    """A bad argument: a name, a number or a combination of flags (exit 2)."""

    exit_code = 2


class Interrupted(EngineError):
    """Ctrl-C: what was completed is saved (exit 130)."""

    exit_code = 130


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colour codes, which torch's exporter puts in its messages


def first_line(error, limit=200):
    """The first non-empty line of an exception's message (or its type's name), at most `limit` long:
    libraries' messages can run to pages, and an error here is one line."""
    lines = [line.strip() for line in ANSI.sub("", str(error)).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:limit]
