"""Checkpoints: written atomically, opened only with `torch.load(weights_only=True)`.

A checkpoint is a dict of tensors and plain Python values: the config, the dataset spec
(classes, input shape, mean, std), model, optimizer, schedule and scaler states, the epoch,
RNG states and the metrics so far. That is enough to resume exactly, to evaluate, and to
rebuild the model for export without the data or the code that trained it.
"""

import contextlib
import hashlib
import os
import re
import signal
import threading
import time
from pathlib import Path

import torch

from engine.errors import EngineError, UsageError, first_line
from engine.faults import pause_point

FORMAT = "engine-checkpoint/1"
REQUIRED = ("format", "config", "data", "model", "epoch")
RESUMABLE = ("optimizer", "scheduler", "rng", "metrics")  # what --resume needs beyond REQUIRED


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


def save_atomic(obj, path, make_parents=False):
    """torch.save to a temporary file beside `path`, fsync, then os.replace: all or nothing.

    The folder must exist unless `make_parents`: a run directory removed mid-run is an error,
    not something to recreate silently."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with interrupts_held():
        try:
            with open(temporary, "wb") as f:
                try:
                    torch.save(obj, f)
                except RuntimeError as error:  # torch's zip writer hides a full disk behind its own error
                    if isinstance(error.__context__, OSError):
                        raise error.__context__ from None
                    raise
                f.flush()
                os.fsync(f.fileno())
            pause_point("save")  # test-only: a kill here is a kill during a checkpoint write
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
    """A checkpoint dict, or one line saying why `path` is not one. Never unpickles code: only
    `torch.load(weights_only=True)`, with no fallback."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        text = str(error).strip()
        refused = re.search(r"unsupported GLOBAL (\S+)|Unsupported global: GLOBAL (\S+)", text, re.I)
        if refused:
            raise EngineError(f"{path} holds pickled code ({refused.group(1) or refused.group(2)}), not only tensors "
                              "and plain values; refusing to load it (checkpoints are opened weights-only)") from None
        # torch's weights-only message opens with advice to load unsafely; the cause is further down
        lines = [line.strip() for line in text.splitlines() if line.strip()
                 and not line.startswith(("Weights only load failed", "Please file an issue", "Check the documentation"))]
        first = lines[0].split(". ")[0] if lines else type(error).__name__  # torch's first sentence
        if "Weights only load failed" in text:  # an unpickler error on bytes that are no checkpoint at all
            first = "not a PyTorch checkpoint, or one holding objects other than tensors and plain values"
        raise EngineError(f"{path} is not a readable engine checkpoint ({first[:200]})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise EngineError(f"{path} is not an engine checkpoint (format {FORMAT})")
    missing = [k for k in REQUIRED if k not in checkpoint]
    if missing:
        raise EngineError(f"{path} is an incomplete engine checkpoint: it has no {', '.join(missing)}")
    _check_layout(checkpoint, path)
    return checkpoint


def _check_layout(checkpoint, path):
    """The plain values eval, export and resume read, with the types they expect."""
    cfg, spec, model = checkpoint["config"], checkpoint["data"], checkpoint["model"]
    problem = None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), str) or not isinstance(cfg.get("data"), str):
        problem = "its config names no model and data"
    elif not isinstance(spec, dict) or not all(k in spec for k in ("classes", "shape", "mean", "std")):
        problem = "its data spec lacks classes, shape, mean or std"
    elif not (isinstance(spec["shape"], (list, tuple)) and len(spec["shape"]) == 3
              and all(isinstance(v, int) and v > 0 for v in spec["shape"])):
        problem = f"its image shape {spec['shape']!r} is not C, H, W"
    elif not isinstance(spec["classes"], (list, tuple)) or len(spec["classes"]) < 2:
        problem = "it lists fewer than 2 classes"
    elif len(spec["mean"]) != spec["shape"][0] or len(spec["std"]) != spec["shape"][0]:
        problem = f"its mean and std do not have {spec['shape'][0]} channels"
    elif not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        problem = "its model is not a state dict of tensors"
    elif not isinstance(checkpoint["epoch"], int) or checkpoint["epoch"] < 0:
        problem = f"its epoch {checkpoint['epoch']!r} is not a count"
    if problem:
        raise EngineError(f"{path} is a damaged engine checkpoint: {problem}")


def check_resume(checkpoint, path, fingerprint, total_steps, source):
    """One line naming what keeps a checkpoint from being resumed on this data: a missing optimizer
    state, RNG states or metrics, data whose images changed, or a schedule of another length."""
    missing = [k for k in RESUMABLE if k not in checkpoint]
    if missing:
        raise EngineError(f"--resume: {path} has no {', '.join(missing)} (it holds weights only); "
                          "evaluate or export it, or start a new run")
    epochs = [m for m in checkpoint["metrics"] if not m.get("partial")] if isinstance(checkpoint["metrics"], list) else None
    if epochs is None or len(epochs) != checkpoint["epoch"]:  # evaluations within an epoch (--eval-every) aside
        raise EngineError(f"--resume: {path} has metrics for {len(checkpoint['metrics'])} epochs but says "
                          f"{checkpoint['epoch']} are done; it is damaged")
    if not isinstance(checkpoint["rng"], dict) or not isinstance(checkpoint["rng"].get("torch"), torch.Tensor):
        raise EngineError(f"--resume: {path} has no torch RNG state; it is damaged")
    changes = fingerprint_changes(checkpoint.get("data_fingerprint") or fingerprint, fingerprint)
    if changes:
        raise EngineError(f"--resume: the data at {source} changed since the run started ({changes}); restore it, "
                          "or start a new run on the new data")
    saved = (checkpoint["scheduler"] or {}).get("total_steps", total_steps)
    if saved != total_steps:
        raise EngineError(f"--resume: the run was scheduled for {saved:,} steps, but the data at {source} now gives "
                          f"{total_steps:,}; restore the data, or start a new run")


def restore(checkpoint, path, model, optimizer, scaler):
    """Load the weights, optimizer and scaler states of a checked checkpoint (see check_state)."""
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
    except (KeyError, ValueError, RuntimeError, TypeError) as error:
        raise EngineError(f"--resume: {path} does not fit this run's model or optimizer ({first_line(error, 160)})") from None


def best_of(checkpoint):
    """(best test accuracy, its epoch) so far: the checkpoint's record, else its metrics' maximum."""
    if isinstance(checkpoint.get("best"), dict):
        return checkpoint["best"]["test_acc"], checkpoint["best"]["epoch"]
    metrics = checkpoint["metrics"]
    best = max(range(len(metrics)), key=lambda i: metrics[i]["test_acc"], default=None)
    return (-1.0, 0) if best is None else (metrics[best]["test_acc"], best + 1)


def repair_run(run, checkpoint, say):
    """last.pt is the commit record; bring the files written after it in step with it. An epoch
    writes last.pt, then best.pt, metrics.jsonl and curves.png: a kill between those renames
    left best.pt and the metrics one epoch behind, and this puts them right."""
    repaired = []
    if run.sync_metrics(checkpoint["metrics"]):
        repaired.append("metrics.jsonl and curves.png")
    _, epoch = best_of(checkpoint)
    if epoch and epoch == checkpoint["epoch"] and not checkpoint.get("step"):  # last.pt is the best epoch itself
        try:
            current = load(run.path / "best.pt")["epoch"]
        except EngineError:
            current = None
        if current != epoch:
            save_atomic(checkpoint, run.path / "best.pt")
            repaired.append("best.pt")
    if repaired:
        say(f"Repaired {' and '.join(repaired)} from last.pt (a kill had left them behind)")


class SaveClock:
    """When a mid-epoch checkpoint is due: `every` seconds after the last save (None: never)."""

    def __init__(self, every):
        self.every, self.last = every, time.monotonic()

    def due(self):
        return self.every is not None and time.monotonic() - self.last >= self.every

    def saved(self):
        self.last = time.monotonic()


def check_state(checkpoint, model, path="the checkpoint"):
    """One line naming the first parameter where the checkpoint's weights and `model` differ (a
    missing or extra key, or another shape): a checkpoint of another model or dataset."""
    saved, wanted = checkpoint["model"], model.state_dict()
    where = f"{path} does not fit {checkpoint['config']['model']} on {'x'.join(map(str, checkpoint['data']['shape']))} images"
    for key, tensor in wanted.items():
        if key not in saved:
            raise EngineError(f"{where}: it has no {key} (a checkpoint of another model?)")
        if tuple(saved[key].shape) != tuple(tensor.shape):
            raise EngineError(f"{where}: {key} is {tuple(saved[key].shape)} in it, {tuple(tensor.shape)} in the model "
                              "(another model, image size or class count?)")
    extra = [key for key in saved if key not in wanted]
    if extra:
        raise EngineError(f"{where}: it has {extra[0]}, which the model lacks (a checkpoint of another model?)")


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
        where = (f"{run_dir} has no last.pt" if run_dir.is_dir() else f"{run_dir} is not a run directory"
                 if run_dir.exists() else f"{run_dir} does not exist")
        raise UsageError(f"--resume: nothing to resume ({where}); train without --resume first, or name a run directory")
    return last


def model_from_checkpoint(checkpoint, path="the checkpoint"):
    """The trained model, rebuilt from the checkpoint alone (eval mode, CPU, fp32, NCHW)."""
    from engine.models import build_model

    spec = checkpoint["data"]
    model = build_model(checkpoint["config"]["model"], tuple(spec["shape"]), len(spec["classes"]))
    check_state(checkpoint, model, path)
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def data_fingerprint(data):
    """What --resume compares: image counts and a digest of the labels and the pixels (a strided
    sample of at most 2,048 images per split, so a large set costs milliseconds)."""
    def digest(x, y):
        h = hashlib.blake2b(digest_size=8)
        h.update(y.numpy().tobytes())
        step = max(1, len(x) // 2048)
        h.update(x[::step].contiguous().numpy().tobytes())
        return h.hexdigest()

    return {"train_images": len(data.train_x), "test_images": len(data.test_x),
            "train": digest(data.train_x, data.train_y), "test": digest(data.test_x, data.test_y)}


def fingerprint_changes(saved, now):
    """A phrase saying what changed between two data fingerprints, or None."""
    changes = [f"{key.replace('_', ' ')} {saved[key]:,} -> {now[key]:,}"
               for key in ("train_images", "test_images") if saved.get(key) != now.get(key)]
    if not changes:
        changes = [f"{split} images or labels differ" for split in ("train", "test") if saved.get(split) != now.get(split)]
    return "; ".join(changes) or None
