"""The processes that decode an image folder's images on every core (engine.data.imagefolder in
memory, engine.data.filecache into a file): a fork pool whose workers leave Ctrl-C to the main
process, and its release, which puts the main process's SIGTERM handler back.
"""

import os


def decoding_pool():
    """(a fork pool of processes for `engine.data.decode.decode`, or None on one core; its worker count). Its workers
    ignore SIGINT: a Ctrl-C reaches the main process alone, which ends them (`stop_pool`). Workers
    that took it printed their tracebacks, and concurrent.futures' pool, with a worker killed
    mid-task, could leave the command waiting forever on its shutdown. While the pool lives, SIGTERM
    has its default action in the main process and the workers alike (the CLI's handler is set
    aside): it ends the command at once, as nothing of a run is written while its images decode. The
    handler would otherwise hang it: a worker killed holding the task queue's lock (a TERM to the
    process group) blocks Pool.terminate(), and a TERM reaching a worker between its fork and its
    initializer is lost (Python clears a forked child's pending signals)."""
    import signal
    import threading
    from multiprocessing import get_context

    workers = max(1, min(os.cpu_count() or 1, 32))
    if workers == 1:
        return None, 1
    handler = None
    if threading.current_thread() is threading.main_thread():
        handler = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # a Ctrl-C between a worker's fork and its
    try:  # initializer waits, blocked, and is dropped there (it printed the worker's traceback); the main process
        pool = get_context("fork").Pool(workers, initializer=_ignore_interrupts)  # takes it once the pool exists
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    pool.engine_sigterm = handler  # what stop_pool puts back
    return pool, workers


def _ignore_interrupts():
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # drops a Ctrl-C held since the fork
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def stop_pool(pool, finished):
    """Let the decoding pool go: after its work when `finished`, else (an error, a Ctrl-C) at once;
    then the main process's SIGTERM handler is put back."""
    import signal

    if pool is None:
        return
    try:
        if finished:
            pool.close()
        else:
            pool.terminate()
        pool.join()
    finally:
        if pool.engine_sigterm is not None:
            signal.signal(signal.SIGTERM, pool.engine_sigterm)
