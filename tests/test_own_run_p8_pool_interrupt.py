"""A Ctrl-C reaching a decoding worker between its fork and its initializer (the initializer makes it
ignore SIGINT): the worker printed KeyboardInterrupt's traceback and died (a loaded machine, where a
forked worker waits for a core, widens that moment). SIGINT is blocked from the fork on, so it waits
there and the initializer drops it."""

import os
import signal
from multiprocessing import util

import pytest

from engine.data.pool import decoding_pool, stop_pool


class _Once:
    """After-fork hook: the first forked worker sends itself SIGINT, as a terminal's Ctrl-C would."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __call__(self, _):
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow  # a pool of processes beside torch
def test_a_ctrl_c_before_a_decoding_workers_initializer_is_dropped(tmp_path, capfd):
    hook = _Once(tmp_path / "fired")
    util.register_after_fork(hook, hook)  # runs in each forked worker, before the pool's initializer
    try:
        pool, workers = decoding_pool()
        if pool is None:
            pytest.skip("one core: no decoding processes")
        try:
            assert sorted(pool.map_async(abs, range(-40, 0), chunksize=1).get(timeout=120)) == list(range(1, 41))
        finally:
            stop_pool(pool, True)
    finally:
        del hook  # its weak reference leaves multiprocessing's after-fork registry
    assert (tmp_path / "fired").exists()  # the Ctrl-C was sent
    err = capfd.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
