"""The files measured decisions are cached in (precision.json, compile.json beside the decode cache):
one JSON object of entries by key, read whole and replaced atomically.

A cache that cannot be read is empty, and one that cannot be written costs a measurement next
time, nothing else: neither ever stops a run.
"""

import json
import os


def read(path):
    """The entries of the JSON file at `path`, or {} if it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write(path, entries):
    """Replace the file at `path` with `entries`, whole or not at all."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
        temporary.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
        os.replace(temporary, path)
    except OSError:
        pass
