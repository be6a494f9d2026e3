"""train(cfg): the training loop, its per-epoch metrics, checkpoints and run directory.

One call does a whole run: `open_session` resolves the runtime, reads the data and builds the
model; then each epoch is `train_epoch` (one `train_step` per batch), `evaluate_epoch`,
`epoch_metrics` and `save_epoch`. Speed is measured without per-step syncs; the first steps of
a process (compile and allocation warm-up) are timed apart from steady state.
"""

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from engine import __version__
from engine.checkpoint import FORMAT, interrupts_held, restore_rng_states, rng_states, save_atomic
from engine.config import Config
from engine.data import check_batch_size, dataset_label, load_dataset
from engine.distributed import Ranks, process_group
from engine.errors import EngineError, Interrupted
from engine.evaluate import evaluate
from engine.loader import BatchLoader
from engine.models import build_model, count_parameters
from engine.optim import build_optimizer, lr_at, set_lr
from engine.report import RunDir, TensorBoard, default_run_dir, format_epoch, progress
from engine.runtime import Runtime, compiled_graphs, resolve_device, setup_backends, warn

WARMUP_STEPS = 3  # steps of a process's first epoch timed as warm-up, not steady state
RUNS = "runs"  # where default-named runs go, and runs/latest


@dataclass
class Session:
    """What a run holds from one epoch to the next: set up by `open_session`, changed by each epoch."""

    cfg: Config  # with absolute paths and the run directory filled in
    runtime: Runtime
    run: RunDir
    spec: dict  # the data spec the checkpoints keep (Dataset.spec(), or the resumed run's)
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    train_loader: BatchLoader
    test_loader: BatchLoader
    tensorboard: TensorBoard | None
    metrics: list  # one dict per completed epoch, resumed ones included
    start_epoch: int = 0  # epochs already done (a resumed run's)
    best: float = -1.0  # the best test accuracy so far
    ranks: Ranks = field(default_factory=Ranks)  # under torchrun: this rank's place; one rank of one otherwise
    ddp: torch.nn.Module | None = None  # `model` under DistributedDataParallel, which training steps call

    @property
    def net(self):
        """What a training step calls: the DDP wrapper under torchrun, else the model itself."""
        return self.ddp or self.model

    @property
    def steps(self):
        return len(self.train_loader)

    @property
    def total_steps(self):
        return self.steps * self.cfg.epochs


@dataclass
class EpochFigures:
    """One epoch's raw figures as measured; `epoch_metrics` turns them into the reported dict."""

    epoch: int  # 0-based
    first: bool  # the first epoch of this process, whose first steps are warm-up
    warm_until: int  # steps timed as warm-up, 0 for none
    started: float  # time.perf_counter() at the epoch's start
    steady_from: float  # ... after the warm-up steps (= started without warm-up)
    trained: float  # ... once the last training step has finished on the device
    loss_sum: torch.Tensor  # () float32 on the device: loss summed over the epoch's images
    correct: torch.Tensor  # () int64 on the device
    test_loss: float = float("nan")  # filled by evaluate_epoch
    test_acc: float = float("nan")
    eval_s: float = 0.0


def open_session(cfg: Config, resume=None, say=print, ranks=None) -> Session:
    """Resolve the runtime and run directory, read the data, build the model, optimizer and scaler,
    restore `resume` (a checkpoint dict) if given, and write config.json. Under torchrun `ranks`
    says which rank this is: rank 0 alone writes the run directory."""
    cfg = cfg.with_absolute_paths()
    ranks = ranks or Ranks()
    runtime = Runtime.from_config(cfg)
    runtime.device = ranks.device or runtime.device  # cuda:LOCAL_RANK under torchrun
    if cfg.tensorboard:
        TensorBoard.require()
    if not cfg.out:
        cfg.out = ranks.broadcast(str(default_run_dir(cfg.model, dataset_label(cfg.data), RUNS)))
    run = RunDir(cfg.out, resuming=resume is not None, create=ranks.is_main)
    try:
        data = load_dataset(cfg, say)
        check_batch_size(data, cfg.batch_size)
        if resume is not None:
            spec = resume["data"]
            if spec["classes"] != data.classes or list(spec["shape"]) != list(data.shape):
                raise EngineError(f"--resume: the data at {cfg.data} no longer matches the run's (classes or image shape changed)")
        else:
            spec = data.spec()
        setup_backends(runtime.device, cfg.seed)
        model = ranks.sync_batchnorm(build_model(cfg.model, data.shape, len(data.classes)))
        ranks.seed(cfg.seed)  # after the common initialisation: dropout differs per rank
        runtime.prepare(model)
    except BaseException:
        run.discard_if_unused()
        raise
    say(f"Model: {cfg.model}, {count_parameters(model):,} parameters, input {'x'.join(map(str, data.shape))}, "
        f"{len(data.classes)} classes; {runtime.describe()}")
    optimizer = build_optimizer(cfg, model)
    scaler = runtime.grad_scaler()
    metrics, start_epoch, best = [], 0, -1.0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        restore_rng_states(ranks.rng_of_rank(resume["rng"]))
        metrics, start_epoch = list(resume["metrics"]), resume["epoch"]
        best = max((m["test_acc"] for m in metrics), default=-1.0)
        say(f"Resuming {run.path} after epoch {start_epoch} of {cfg.epochs}")

    device = runtime.device
    train_loader = BatchLoader(data.train_x, data.train_y, cfg.batch_size, spec["mean"], spec["std"], device=device,
                               train=True, flip=spec["flip"], seed=cfg.seed, channels_last=cfg.channels_last,
                               rank=ranks.rank, world=ranks.world)
    test_loader = BatchLoader(data.test_x, data.test_y, cfg.batch_size, spec["mean"], spec["std"], device=device,
                              train=False, channels_last=cfg.channels_last, rank=ranks.rank, world=ranks.world)
    if ranks.is_main:
        run.write_config(cfg.to_dict(), spec)
        if run.path.parent.resolve() == (Path.cwd() / RUNS).resolve():  # runs/latest: the newest run in runs/
            run.point_latest()
    tensorboard = TensorBoard(run.path) if cfg.tensorboard and ranks.is_main else None
    session = Session(cfg, runtime, run, spec, model, optimizer, scaler, train_loader, test_loader, tensorboard,
                      metrics, start_epoch, best, ranks, ranks.wrap(model) if ranks.world > 1 else None)
    per_rank = f" per rank x {ranks.world} ranks = {cfg.batch_size * ranks.world} global" if ranks.world > 1 else ""
    say(f"Run: {run.path} ({len(data.train_x):,} train / {len(data.test_x):,} test images, "
        f"{session.steps} steps of {cfg.batch_size}{per_rank} an epoch, {cfg.epochs} epoch{'s' if cfg.epochs > 1 else ''})")
    return session


def train_step(s: Session, x, y, step):
    """One optimizer step on the batch x (B, C, H, W), y (B,) at global `step`; returns the
    detached loss () and logits (B, classes)."""
    set_lr(s.optimizer, lr_at(s.cfg, step, s.total_steps))
    with s.runtime.autocast():
        logits = s.net(x)  # (B, classes)
        loss = F.cross_entropy(logits, y, label_smoothing=s.cfg.label_smoothing)
    s.optimizer.zero_grad(set_to_none=True)
    s.scaler.scale(loss).backward()
    s.scaler.step(s.optimizer)
    s.scaler.update()
    return loss.detach(), logits.detach()


def train_epoch(s: Session, epoch, first) -> EpochFigures:
    """One pass over the training batches, with the progress bar; in the `first` epoch of this
    process the first steps are timed apart as warm-up. Syncs the device only at the end."""
    started = time.perf_counter()
    s.model.train()
    device = s.runtime.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    steps = s.steps
    warm_until = WARMUP_STEPS if first and steps > 2 * WARMUP_STEPS else 0
    steady_from, bar = started, progress(steps, epoch + 1, s.cfg.quiet)
    for i, (x, y, _) in enumerate(s.train_loader.epoch(epoch)):
        loss, logits = train_step(s, x, y, epoch * steps + i)
        loss_sum += loss.float() * len(y)
        correct += (logits.argmax(1) == y).sum()
        if i + 1 == warm_until:
            s.runtime.sync()
            steady_from = time.perf_counter()
        if not bar.disable:
            bar.update()
            if i % 25 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    loss_sum, correct = s.ranks.sum(loss_sum, correct)  # whole-epoch figures under DDP
    s.runtime.sync()
    return EpochFigures(epoch, first, warm_until, started, steady_from, time.perf_counter(), loss_sum, correct)


def evaluate_epoch(s: Session, figures: EpochFigures):
    """Test loss and accuracy after the epoch, and how long they took, into `figures`."""
    eval_started = time.perf_counter()
    s.ranks.sync_buffers(s.model)  # every rank evaluates its shard with rank 0's BatchNorm statistics
    figures.test_loss, figures.test_acc = evaluate(s.model, s.test_loader, s.runtime)
    figures.eval_s = time.perf_counter() - eval_started


def epoch_metrics(s: Session, figures: EpochFigures) -> dict:
    """The epoch's reported figures (metrics.jsonl, the printed line, TensorBoard), rounded."""
    f, cfg, steps = figures, s.cfg, s.steps
    seen = steps * cfg.batch_size * s.ranks.world  # all ranks' images
    steady_images = seen - f.warm_until * cfg.batch_size * s.ranks.world
    m = {
        "epoch": f.epoch + 1,
        "train_loss": round(f.loss_sum.item() / seen, 5),
        "train_acc": round(f.correct.item() / seen, 5),
        "test_loss": round(f.test_loss, 5),
        "test_acc": round(f.test_acc, 5),
        "images_per_s": round(steady_images / (f.trained - f.steady_from), 1),
        "epoch_s": round(time.perf_counter() - f.started, 2),
        "warmup_s": round(f.steady_from - f.started, 2) if f.warm_until else 0.0,
        "eval_s": round(f.eval_s, 2),
        "lr": lr_at(cfg, (f.epoch + 1) * steps - 1, s.total_steps),
    }
    if s.runtime.compile:
        m["compiled_graphs"] = compiled_graphs()
        if not f.first and m["compiled_graphs"] > s.metrics[-1].get("compiled_graphs", 0):
            warn(f"torch.compile built new graphs during epoch {f.epoch + 1}: shapes or modes changed")
    return m


def checkpoint_state(s: Session, epochs_done):
    """The checkpoint after `epochs_done` epochs: tensors and plain values only (see checkpoint.load)."""
    return {
        "format": FORMAT, "config": s.cfg.to_dict(), "data": s.spec, "model": s.model.state_dict(),
        "optimizer": s.optimizer.state_dict(),
        "scheduler": {"step": epochs_done * s.steps, "total_steps": s.total_steps},
        "scaler": s.scaler.state_dict(), "epoch": epochs_done, "rng": s.ranks.gather_rng(rng_states()), "metrics": s.metrics,
        "versions": {"engine": __version__, "torch": str(torch.__version__)},
    }


def save_epoch(s: Session, m, best_now):
    """last.pt (and best.pt if `best_now`), metrics.jsonl, curves.png and TensorBoard for the epoch `m`."""
    state = checkpoint_state(s, m["epoch"])  # every rank: it gathers their RNG states
    if not s.ranks.is_main:
        return
    with interrupts_held():  # an epoch's files are written whole, or not at all
        save_atomic(state, s.run.path / "last.pt")
        if best_now:
            save_atomic(state, s.run.path / "best.pt")
        s.run.write_metrics(s.metrics)
        s.run.plot(s.metrics)
        if s.tensorboard:
            s.tensorboard.log(m)


def train(cfg: Config, resume=None, log=print):
    """Train as `cfg` says; `resume` is a checkpoint dict to continue. Returns (run dir, metrics).
    Under torchrun every rank calls it, inside the process group; only rank 0 logs."""
    with process_group(resolve_device(cfg.device)) as ranks:
        return train_ranks(cfg, resume, log if ranks.is_main else (lambda *_: None), ranks)


def train_ranks(cfg: Config, resume, log, ranks: Ranks):
    """train() as one of `ranks`."""
    say = (lambda *_: None) if cfg.quiet else log
    s = open_session(cfg, resume, say, ranks)
    first = True  # the first epoch of this process times its first steps apart
    try:
        for epoch in range(s.start_epoch, s.cfg.epochs):
            figures = train_epoch(s, epoch, first)
            evaluate_epoch(s, figures)
            m = epoch_metrics(s, figures)
            s.metrics.append(m)
            best_now = figures.test_acc > s.best  # unrounded, as measured
            s.best = max(s.best, figures.test_acc)
            save_epoch(s, m, best_now)
            log(format_epoch(m))
            if figures.warm_until and s.runtime.compile:
                say(f"Warm-up: {m['warmup_s']:.1f} s for the first {figures.warm_until} steps (torch.compile), kept out of img/s")
            first = False
    except KeyboardInterrupt:
        if not (s.run.path / "last.pt").exists():
            raise Interrupted(f"interrupted before the first epoch ended; nothing to resume in {s.run.path}") from None
        raise Interrupted(f"interrupted; completed epochs are saved: continue with engine train --resume {s.run.path}") from None
    finally:
        if s.tensorboard:
            s.tensorboard.close()
    say(f"Saved {Path(s.run.path) / 'last.pt'} (best test accuracy {s.best * 100:.1f}%: best.pt)")
    return s.run.path, s.metrics
