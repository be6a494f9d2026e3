"""Who owns a folder's files: the run-directory lock, and temporaries that dead processes left behind.

`RunLock` is an `fcntl.flock` on `.engine.lock` in the run directory: one training at a time,
and the kernel releases it when its owner dies, even by kill -9, so it never stays stuck.
`remove_stale_temporaries` deletes the `.NAME.tmpPID` files of atomic writes whose process is
gone (a kill between write and rename), in run directories and in the decode cache.
"""

import os
import re
from pathlib import Path

from engine.errors import EngineError

LOCK_NAME = ".engine.lock"
TEMPORARY = re.compile(r"^\..+\.tmp(\d+)(\..*)?$")  # .last.pt.tmp123, .curves.png.tmp123.png


class RunLock:
    """Held from creation until `release()` (or the process's death)."""

    def __init__(self, folder, what="--out"):
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, as before
            self.fd = None
            return
        self.path = Path(folder) / LOCK_NAME
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:  # a read-only or foreign folder: the run could not write its checkpoints either
                raise EngineError(f"{what} {folder}: cannot write there ({error.strerror or error}); "
                                  f"{'a resumed run writes its checkpoints there' if what == '--resume' else 'choose a writable --out'}"
                                  ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise EngineError(f"{what} {folder} is in use by another engine train (pid {owner}); wait for it to "
                                  "finish, or choose another run directory") from None
            # The previous owner unlinks the file as it releases it: if that happened between our
            # open and our flock, we hold a lock on a deleted file; open the new one instead.
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self):
        """Remove the lock file and let go (unlink first, while still holding it: see __init__)."""
        if self.fd is None:
            return
        try:
            if os.fstat(self.fd).st_ino == os.stat(self.path).st_ino:
                self.path.unlink()
        except OSError:
            pass  # the run directory is gone
        os.close(self.fd)
        self.fd = None


def remove_stale_temporaries(folder):
    """Delete `.NAME.tmpPID` files in `folder` whose process is gone; returns their names."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = TEMPORARY.match(entry.name)
        if not match or _alive(int(match.group(1))):
            continue
        try:
            entry.unlink()
            removed.append(entry.name)
        except OSError:
            pass
    return removed


def _alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: another user's live process
        return True
    return True
