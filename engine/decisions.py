"""The files measured decisions are cached in (precision.json, compile.json beside the decode cache):
one JSON object of entries by key, read whole and replaced atomically.

A cache that cannot be read is empty, and one that cannot be written costs a measurement next
time, nothing else: neither ever stops a run.
"""

import json
import os
import sys


def read(path):
    """The entries of the JSON file at `path`, or {} if it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


_unwritable = set()  # files already said to be unwritable in this process


def write(path, entries):
    """Replace the file at `path` with `entries`, whole or not at all; a file that cannot be written
    (a read-only cache folder) is said once, as the decode cache says it: its measurements are
    taken again next time."""
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
        os.replace(temporary, path)
    except OSError as error:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass
        if path not in _unwritable:
            _unwritable.add(path)
            print(f"engine: warning: could not write {path} ({error.strerror or error}); what it keeps is measured "
                  "again next time", file=sys.stderr)
