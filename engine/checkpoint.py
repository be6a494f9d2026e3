"""Checkpoints: the one owner of their layout, written atomically, opened only with `torch.load(weights_only=True)`.

`Checkpoint` is the typed record; on disk it is a dict of tensors and plain Python values (the
config, the input spec, the model's stored reference and weights (with --ema their average, with --lookahead its slow copy),
optimizer, schedule and scaler states, the epoch, RNG states and the metrics so far). That is enough to resume exactly, to
evaluate, and to rebuild the model for export without the data, and without running any code
the person opening it did not name (engine/models/reference.py).
"""

import contextlib
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from engine.data.dataset import InputSpec
from engine.errors import EngineError, UsageError
from engine.faults import pause_point
from engine.safe_load import read_weights_only
from engine.models.reference import ModelRef
from engine.models.weights import take_buffer_shapes

FORMAT = "engine-checkpoint/1"
REQUIRED = ("format", "config", "data", "model", "epoch")


@dataclass
class Checkpoint:
    """A run's state after `epoch` epochs (and `step` steps of the next, for one saved within an epoch).
    A weights-only checkpoint has no optimizer, scheduler, rng: it evaluates and exports, not resumes."""

    config: dict  # Config.to_dict() of the run
    spec: InputSpec  # the data's classes, shape, mean, std, flip (stored as "data")
    model: dict  # the state dict
    epoch: int
    ref: ModelRef  # what builds the model (stored as "model_ref"; older checkpoints: the built-in config["model"])
    optimizer: dict | None = None
    scheduler: dict | None = None  # {"step": global steps done, "total_steps": of the whole run}
    scaler: dict | None = None
    rng: dict | None = None  # rng_states(), per rank under DDP
    metrics: list | None = None  # one dict per evaluation (None: a weights-only checkpoint)
    step: int = 0
    partial: dict | None = None  # a mid-epoch checkpoint's running loss and accuracy sums
    best: dict | None = None  # {"acc": the best score so far, "split": "validation" or "test", "epoch": its epoch}
    fingerprint: dict | None = None  # resume.data_fingerprint of the data (stored as "data_fingerprint")
    frozen: list = field(default_factory=list)  # parameters that do not train
    runtime: dict = field(default_factory=dict)  # Runtime.resolved() of the run
    versions: dict = field(default_factory=dict)
    ema: dict | None = None  # --ema: the averaged weights, keyed as `model` (stored as "model_ema", as torchvision does)
    ema_updates: int = 0  # optimizer steps the average holds
    lookahead: dict | None = None  # --lookahead: its slow copy, keyed as `model` (stored as "model_lookahead")

    @property
    def resumable(self):
        return None not in (self.optimizer, self.scheduler, self.rng, self.metrics)

    @property
    def epochs_done(self):
        """Epochs this checkpoint holds: whole ones, or e.g. 1.25 for one saved within an epoch (a stop
        at --target-acc, --save-every)."""
        scheduler, epochs = self.scheduler or {}, self.config.get("epochs")
        if not self.step or not scheduler.get("total_steps") or not epochs:
            return self.epoch
        return round(scheduler["step"] / (scheduler["total_steps"] / epochs), 4)  # as metrics.jsonl rounds it

    def to_dict(self):
        """The plain dict torch.save writes (see load for the reverse)."""
        return {"format": FORMAT, "config": self.config, "data": asdict(self.spec), "model": self.model,
                "model_ref": self.ref.to_dict(), "epoch": self.epoch, "optimizer": self.optimizer,
                "scheduler": self.scheduler, "scaler": self.scaler, "rng": self.rng, "metrics": self.metrics,
                "step": self.step, "partial": self.partial, "best": self.best, "data_fingerprint": self.fingerprint,
                "frozen": list(self.frozen), "runtime": self.runtime, "versions": self.versions,
                "model_ema": self.ema, "ema_updates": self.ema_updates, "model_lookahead": self.lookahead}

    @classmethod
    def from_dict(cls, values, path="the checkpoint"):
        """A loaded dict as the record, its layout and model reference checked (one line if not)."""
        missing = [k for k in REQUIRED if k not in values]
        if missing:
            raise EngineError(f"{path} is an incomplete engine checkpoint: it has no {', '.join(missing)}")
        _check_layout(values, path)
        spec = values["data"]
        ref = values.get("model_ref") or {"kind": "builtin", "name": values["config"]["model"]}
        return cls(config=values["config"], model=values["model"], epoch=values["epoch"],
                   spec=InputSpec(spec.get("name", ""), list(spec["classes"]), list(spec["shape"]), list(spec["mean"]),
                                  list(spec["std"]), bool(spec.get("flip", False))),
                   ref=ModelRef.from_dict(ref, path), optimizer=values.get("optimizer"),
                   scheduler=values.get("scheduler"), scaler=values.get("scaler"), rng=values.get("rng"),
                   metrics=values.get("metrics"),
                   step=values.get("step") or 0, partial=values.get("partial"), best=values.get("best"),
                   fingerprint=values.get("data_fingerprint"), frozen=list(values.get("frozen") or ()),
                   runtime=values.get("runtime") or {}, versions=values.get("versions") or {},
                   ema=values.get("model_ema"), ema_updates=values.get("ema_updates") or 0,
                   lookahead=values.get("model_lookahead"))


_holding = []  # non-empty while interrupts_held() is active: nested holds are one hold


@contextlib.contextmanager
def interrupts_held():
    """Hold Ctrl-C until the block ends, then raise it. torch.save interrupted half-way raises a
    RuntimeError, and an epoch's last.pt, best.pt and metrics must not get out of step. SIGTERM is
    held too where a Python handler takes it (the CLI's, engine.cli.terminated), then handed to it."""
    if _holding or threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    held = [signal.SIGINT] + [signal.SIGTERM] * callable(signal.getsignal(signal.SIGTERM))  # TERM: the CLI's handler
    previous = {number: signal.signal(number, lambda number, _: received.append(number)) for number in held}
    _holding.append(True)
    try:
        yield
    finally:
        _holding.pop()
        for number, handler in previous.items():
            signal.signal(number, handler)
    if signal.SIGTERM in received:
        previous[signal.SIGTERM](signal.SIGTERM, None)
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


def load(path) -> Checkpoint:
    """The checkpoint at `path`, or one line saying why `path` is not one (see read_weights_only)."""
    if not str(path).strip():
        raise UsageError("the checkpoint is an empty path; name a checkpoint file (a run's best.pt or last.pt)")
    path = Path(path).expanduser()  # engine eval "~/runs/a/best.pt": quoted, the shell left the ~ (as --init-from)
    if path.is_dir():
        raise UsageError(f"{path} is a folder, not a checkpoint; name a file in it (a run's best.pt or last.pt)")
    if not path.is_file():
        raise EngineError(f"no checkpoint at {path}")  # a missing file, exit 1 (as a missing image or data folder)
    checkpoint = read_weights_only(path)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise EngineError(_not_a_checkpoint(path, checkpoint))
    return Checkpoint.from_dict(checkpoint, path)


def _not_a_checkpoint(path, loaded):
    """Why `loaded` (read from `path`) is no checkpoint of this engine: another version's, plain weights, or other."""
    if isinstance(loaded, dict) and "format" in loaded:  # another version's (engine-checkpoint/2), or another program's
        return (f"{path} is a checkpoint of format {str(loaded['format'])[:60]!r}, which this engine cannot read "
                f"(it reads {FORMAT}, written by engine train)")
    inner = next((loaded[key] for key in ("state_dict", "model", "model_state_dict") if isinstance(loaded, dict)
                  and isinstance(loaded.get(key), dict)), loaded)
    if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
        return (f"{path} is not an engine checkpoint (format {FORMAT}, written by engine train) but plain weights "
                f"(a state dict): start a run from them with engine train --init-from {path}")
    return f"{path} is not an engine checkpoint (format {FORMAT}, written by engine train)"


def save(checkpoint: Checkpoint, path):
    save_atomic(checkpoint.to_dict(), path)


EXTRA_WEIGHTS = ("model_ema", "model_lookahead")  # state dicts beside "model" that some runs keep (--ema, --lookahead)


def _tensors_or_none(weights):
    return weights is None or (isinstance(weights, dict) and all(isinstance(v, torch.Tensor) for v in weights.values()))


def _check_layout(checkpoint, path):
    """The plain values eval, export and resume read, with the types they expect."""
    cfg, spec, model = checkpoint["config"], checkpoint["data"], checkpoint["model"]
    problem = None
    broken = next((extra for extra in EXTRA_WEIGHTS if not _tensors_or_none(checkpoint.get(extra))), None)
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
    elif broken:
        problem = f"its {broken} is not a state dict of tensors"
    elif not isinstance(checkpoint["epoch"], int) or checkpoint["epoch"] < 0:
        problem = f"its epoch {checkpoint['epoch']!r} is not a count"
    else:  # NaN, never infinity: a user model's buffer may hold -inf (an attention mask)
        parts = (("", model), *((f"{extra} ", checkpoint.get(extra) or {}) for extra in EXTRA_WEIGHTS))
        bad = next((f"{part}{key}" for part, weights in parts
                    for key, v in weights.items() if v.is_floating_point() and v.isnan().any()), None)
        problem = f"its {bad} holds NaN values (the engine never saves such weights)" if bad else None
    if problem:
        raise EngineError(f"{path} is a damaged engine checkpoint: {problem}")


class SaveClock:
    """When a mid-epoch checkpoint is due: `every` seconds after the last save (None: never)."""

    def __init__(self, every):
        self.every, self.last = every, time.monotonic()

    def due(self):
        return self.every is not None and time.monotonic() - self.last >= self.every

    def saved(self):
        self.last = time.monotonic()


def check_state(checkpoint: Checkpoint, model, path="the checkpoint", saved=None):
    """One line naming the first parameter where the checkpoint's weights (or `saved`, e.g. its
    averaged ones) and `model` differ (a missing or extra key, or another shape): a checkpoint of
    another model or dataset. First, buffers whose shape the model's forward sets take the saved
    shape (take_buffer_shapes)."""
    saved = checkpoint.model if saved is None else saved
    take_buffer_shapes(model, saved)
    wanted = model.state_dict()
    where = f"{path} does not fit {checkpoint.ref.name} on {'x'.join(map(str, checkpoint.spec.shape))} images"
    for key, tensor in wanted.items():
        if key not in saved:
            raise EngineError(f"{where}: it has no {key} (a checkpoint of another model?)")
        if tuple(saved[key].shape) != tuple(tensor.shape):
            raise EngineError(f"{where}: {key} is {tuple(saved[key].shape)} in it, {tuple(tensor.shape)} in the model "
                              "(another model, image size or class count?)")
    extra = [key for key in saved if key not in wanted]
    if extra:
        raise EngineError(f"{where}: it has {extra[0]}, which the model lacks (a checkpoint of another model?)")


def model_from_checkpoint(checkpoint: Checkpoint, path="the checkpoint", code=None, say=print):
    """The trained model, rebuilt from the checkpoint (eval mode, CPU, fp32, NCHW): the averaged
    weights of a run with --ema (said in one line), which its evaluations measured, else the
    weights. `code`: the --model given on this command line (a ModelRef), which a user model's
    checkpoint needs."""
    from engine.models.build import build
    from engine.models.reference import reopen
    from engine.models.user_code import load_code

    ref = reopen(checkpoint.ref, code, path)
    if ref.user_code:
        load_code(ref)  # imported before the seed, as training imports it before seeding (its top level may draw)
    # Built as training built it, right after torch.manual_seed(seed): a value its __init__ draws outside the
    # state dict (a persistent=False buffer, a tensor attribute) is the run's again, not a fresh draw that
    # silently changes the trained model's logits. The caller's random state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(checkpoint.config.get("seed", 0))
        model = build(ref, tuple(checkpoint.spec.shape), len(checkpoint.spec.classes))
    weights = checkpoint.model if checkpoint.ema is None else checkpoint.ema
    check_state(checkpoint, model, path, weights)
    model.load_state_dict(weights)
    if checkpoint.ema is not None:
        say(f"Using the weight average in {path} (--ema {checkpoint.config.get('ema')}, "
            f"{checkpoint.ema_updates:,} step{'s' * (checkpoint.ema_updates != 1)}), as its evaluations did")
    return model.eval()
