"""Checkpoints: written atomically, opened only with `torch.load(weights_only=True)`.

A checkpoint is a dict of tensors and plain Python values: the config, the dataset spec
(classes, input shape, mean, std), model, optimizer, schedule and scaler states, the epoch,
RNG states and the metrics so far. That is enough to resume exactly, to evaluate, and to
rebuild the model for export without the data or the code that trained it.
"""

import contextlib
import os
import signal
import threading
from pathlib import Path

import torch

from engine.errors import EngineError, UsageError

FORMAT = "engine-checkpoint/1"
REQUIRED = ("format", "config", "data", "model", "epoch")


_holding = []  # non-empty while interrupts_held() is active: nested holds are one hold


@contextlib.contextmanager
def interrupts_held():
    """Hold Ctrl-C until the block ends, then raise it. torch.save interrupted half-way raises a
    RuntimeError, and an epoch's last.pt, best.pt and metrics must not get out of step."""
    if _holding or threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
    _holding.append(True)
    try:
        yield
    finally:
        _holding.pop()
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def save_atomic(obj, path):
    """torch.save to a temporary file beside `path`, fsync, then os.replace: all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with interrupts_held():
        try:
            with open(temporary, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
        finally:
            if temporary.exists():
                temporary.unlink()


def rng_states():
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states):
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def load(path):
    """A checkpoint dict, or one line saying why `path` is not one."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise EngineError(f"{path} is not a readable engine checkpoint ({first[:200]})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT or not all(k in checkpoint for k in REQUIRED):
        raise EngineError(f"{path} is not an engine checkpoint (format {FORMAT})")
    return checkpoint


def resume_path(run_dir):
    """last.pt of `run_dir` (a run directory, `runs/latest`, or that last.pt itself).

    Any other checkpoint (best.pt, a copy) is refused: resuming rewrites the run's last.pt and
    metrics from the checkpoint's epoch on, which would silently drop the epochs after it.
    """
    run_dir = Path(run_dir)
    if run_dir.is_file():
        if run_dir.name != "last.pt":
            raise UsageError(f"--resume takes a run directory or its last.pt, not {run_dir}; to go on from another "
                             "checkpoint, copy it as last.pt into a new run directory")
        return run_dir
    last = run_dir / "last.pt"
    if not last.is_file():
        where = f"{run_dir} has no last.pt" if run_dir.is_dir() else f"{run_dir} does not exist"
        raise UsageError(f"--resume: nothing to resume ({where}); train without --resume first, or name a run directory")
    return last


def model_from_checkpoint(checkpoint):
    """The trained model, rebuilt from the checkpoint alone (eval mode, CPU, fp32, NCHW)."""
    from engine.models import build_model

    spec = checkpoint["data"]
    model = build_model(checkpoint["config"]["model"], tuple(spec["shape"]), len(spec["classes"]))
    model.load_state_dict(checkpoint["model"])
    return model.eval()
