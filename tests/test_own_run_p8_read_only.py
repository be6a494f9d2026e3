"""A run directory made read-only mid-run (a remount, a permission change) stopped the run with
'cannot save to RUN (Read-only file system) ... make room, then engine train --resume RUN': room was
not what it lacked. The line says to make it writable; a full disk still says make room."""

import errno
import os

import pytest

from engine.errors import EngineError
from engine.report import RunDir


def failed_save(run, number):
    with pytest.raises(EngineError) as caught:
        with run.saving():
            raise OSError(number, os.strerror(number), str(run.path / ".last.pt.tmp1"))  # as the write fails
    return str(caught.value)


@pytest.mark.parametrize("number", [errno.EROFS, errno.EACCES])
def test_a_read_only_run_directory_says_make_it_writable(tmp_path, number):
    run = RunDir(tmp_path / "run")
    try:
        assert failed_save(run, number).endswith("stopped before any checkpoint was saved (nothing is kept): make it "
                                                 "writable and train again")
        (run.path / "last.pt").write_bytes(b"saved")
        line = failed_save(run, number)
        assert line == (f"cannot save to {run.path} ({os.strerror(number)}); stopped, the last good checkpoint is kept: "
                        f"make it writable, then engine train --resume {run.path}")
    finally:
        run.close()


def test_a_full_disk_still_says_make_room(tmp_path):
    run = RunDir(tmp_path / "run")
    try:
        (run.path / "last.pt").write_bytes(b"saved")
        assert "kept: make room, then engine train --resume" in failed_save(run, errno.ENOSPC)
    finally:
        run.close()
