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
from engine.checkpoint import (FORMAT, SaveClock, best_of, check_resume, check_state, data_fingerprint, interrupts_held,
                               repair_run, restore, restore_rng_states, rng_states, save_atomic)
from engine.config import Config, parse_duration
from engine.data import check_batch_size, dataset_label, load_dataset
from engine.distributed import Ranks, process_group
from engine.errors import EngineError, Interrupted
from engine.evaluate import evaluate
from engine.faults import CHECK_EVERY, LossWatch, pause_point
from engine.loader import BatchLoader
from engine.models import build_model, count_parameters
from engine.optim import build_optimizer, lr_at, set_lr
from engine.recipe import freeze, frozen, init_from_data
from engine.report import RunDir, TensorBoard, default_run_dir, format_epoch, progress
from engine.runtime import Runtime, compiled_graphs, resolve_device, setup_backends, warn
from engine.target import Watch, reached_in

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
    fingerprint: dict | None = None  # checkpoint.data_fingerprint of the data, which --resume compares
    best_epoch: int = 0  # the epoch best.pt holds
    resume_step: int = 0  # steps of epoch `start_epoch` done before a mid-epoch checkpoint
    partial: dict | None = None  # ... and that epoch's running loss and accuracy sums
    clock: SaveClock | None = None  # when a mid-epoch checkpoint is due (--save-every)
    val_loader: BatchLoader | None = None  # --val-split's images, which then choose best.pt
    watch: Watch | None = None  # when to evaluate within an epoch, and --target-acc
    reached: dict | None = None  # the metrics entry that reached --target-acc: the run stops there
    log: object = print  # where epoch lines go

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
    skipped: int = 0  # steps a mid-epoch checkpoint had already done (resumed), not run here
    steps_done: int = 0  # an evaluation within the epoch (--eval-every): its steps so far; 0 at the end
    val_loss: float = float("nan")  # with --val-split
    val_acc: float = float("nan")


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
        fingerprint = data_fingerprint(data)
        if resume is not None:
            total = len(data.train_x) // (cfg.batch_size * ranks.world) * cfg.epochs
            check_resume(resume, run.path / "last.pt", fingerprint, total, cfg.data)
            spec = resume["data"]
            if spec["classes"] != data.classes or list(spec["shape"]) != list(data.shape):
                raise EngineError(f"--resume: the data at {cfg.data} no longer matches the run's (classes or image shape changed)")
        else:
            spec = data.spec()
        setup_backends(runtime.device, cfg.seed)
        model = ranks.sync_batchnorm(build_model(cfg.model, data.shape, len(data.classes)))
        ranks.seed(cfg.seed)  # after the common initialisation: dropout differs per rank
        if resume is not None:
            check_state(resume, model, run.path / "last.pt")  # one line naming a mismatch
        else:  # e.g. fast_cifar's whitened stem; a resume loads it from the checkpoint
            init_from_data(model, data.train_x, spec, cfg.seed, say)
        runtime.prepare(model)
    except BaseException:
        run.discard_if_unused()
        raise
    say(f"Model: {cfg.model}, {count_parameters(model):,} parameters, input {'x'.join(map(str, data.shape))}, "
        f"{len(data.classes)} classes; {runtime.describe()}")
    optimizer = build_optimizer(cfg, model)
    scaler = runtime.grad_scaler()
    metrics, start_epoch, best, best_epoch, step = [], 0, -1.0, 0, 0
    if resume is not None:
        restore(resume, run.path / "last.pt", model, optimizer, scaler)
        freeze(model, resume.get("frozen", ()))  # what the fresh run's init froze (a whitened stem)
        restore_rng_states(ranks.rng_of_rank(resume["rng"]))
        metrics, start_epoch, step = list(resume["metrics"]), resume["epoch"], resume.get("step", 0)
        best, best_epoch = best_of(resume)
        if reached_in(metrics):  # it stopped at --target-acc: nothing is left to train
            start_epoch, step = cfg.epochs, 0
        if ranks.is_main:
            repair_run(run, resume, say)  # last.pt is the commit record: best.pt and metrics follow it
        say(f"Resuming {run.path} after epoch {start_epoch}{f' and {step} steps' if step else ''} of {cfg.epochs}")
        changed = [f"{k} {v} -> {runtime.resolved()[k]}" for k, v in resume.get("runtime", {}).items()
                   if runtime.resolved().get(k) != v]
        if changed:  # another machine, or other runtime flags: the weights continue, the arithmetic changes
            warn(f"resuming on a different runtime: {', '.join(changed)}")

    device = runtime.device
    train_loader = BatchLoader(data.train_x, data.train_y, cfg.batch_size, spec["mean"], spec["std"], device=device,
                               train=True, flip=spec["flip"], seed=cfg.seed, channels_last=cfg.channels_last,
                               crop_padding=cfg.crop_padding,
                               rank=ranks.rank, world=ranks.world)
    test_loader = BatchLoader(data.test_x, data.test_y, cfg.batch_size, spec["mean"], spec["std"], device=device,
                              train=False, channels_last=cfg.channels_last, rank=ranks.rank, world=ranks.world)
    if ranks.is_main:
        run.write_config(cfg.to_dict(), spec, runtime.resolved())
        if run.path.parent.resolve() == (Path.cwd() / RUNS).resolve():  # runs/latest: the newest run in runs/
            run.point_latest()
    tensorboard = TensorBoard(run.path) if cfg.tensorboard and ranks.is_main else None
    session = Session(cfg, runtime, run, spec, model, optimizer, scaler, train_loader, test_loader, tensorboard,
                      metrics, start_epoch, best, ranks, ranks.wrap(model) if ranks.world > 1 else None,
                      fingerprint, best_epoch, step, resume.get("partial") if resume else None,
                      SaveClock(parse_duration(cfg.save_every) if ranks.world == 1 else None))  # DDP: epoch ends only
    if data.val_x is not None:
        session.val_loader = BatchLoader(data.val_x, data.val_y, cfg.batch_size, spec["mean"], spec["std"], device=device,
                                         train=False, channels_last=cfg.channels_last, rank=ranks.rank, world=ranks.world)
    session.watch, session.reached = Watch(cfg.target_acc, cfg.eval_every, session.steps), reached_in(metrics)
    per_rank = f" per rank x {ranks.world} ranks = {cfg.batch_size * ranks.world} global" if ranks.world > 1 else ""
    val = f" / {len(data.val_x):,} validation" if data.val_x is not None else ""
    say(f"Run: {run.path} ({len(data.train_x):,} train{val} / {len(data.test_x):,} test images, "
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
    skip, partial, s.resume_step, s.partial = s.resume_step, s.partial, 0, None  # a mid-epoch checkpoint's place
    loss_sum = partial["loss_sum"].to(device) if partial else torch.zeros((), device=device)
    correct = partial["correct"].to(device) if partial else torch.zeros((), device=device, dtype=torch.int64)
    steps, watch = s.steps, LossWatch(device, s.cfg.lr)
    warm_until = WARMUP_STEPS if first and steps - skip > 2 * WARMUP_STEPS else 0
    steady_from, bar = started, progress(steps - skip, epoch + 1, s.cfg.quiet)
    for i, (x, y, _) in enumerate(s.train_loader.epoch(epoch, skip=skip), start=skip):
        loss, logits = train_step(s, x, y, epoch * steps + i)
        loss_sum += loss.float() * len(y)
        correct += (logits.argmax(1) == y).sum()
        if s.watch.due(i + 1):  # --eval-every within the epoch; --target-acc may stop the run here
            # (before a --save-every checkpoint of the same step, which then holds this evaluation)
            s.runtime.sync()
            paused = time.perf_counter()
            record(s, EpochFigures(epoch, first, warm_until, started, steady_from, paused,
                                   *s.ranks.sum(loss_sum.clone(), correct.clone()), skipped=skip, steps_done=i + 1))
            if s.reached:
                break
            s.model.train()
            if i + 1 - skip >= warm_until:  # img/s counts training time only
                steady_from += time.perf_counter() - paused
        watch.update(loss)  # no sync: read every CHECK_EVERY steps and before any checkpoint
        if (i + 1) % CHECK_EVERY == 0 or i + 1 == steps or (i + 1 < steps and s.clock.due()):
            saving = i + 1 == steps or s.clock.due()  # never a checkpoint of non-finite weights
            watch.check(epoch, i + 1, s.model if saving else None)
            if i + 1 < steps and s.clock.due():
                save_partial(s, epoch, i + 1, loss_sum, correct)
        pause_point("step")
        if i + 1 - skip == warm_until:
            s.runtime.sync()
            steady_from = time.perf_counter()
        if not bar.disable:
            bar.update()
            if i % 25 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    loss_sum, correct = s.ranks.sum(loss_sum, correct)  # whole-epoch figures under DDP
    s.runtime.sync()
    return EpochFigures(epoch, first, warm_until, started, steady_from, time.perf_counter(), loss_sum, correct, skipped=skip)


def evaluate_epoch(s: Session, figures: EpochFigures):
    """Test loss and accuracy after the epoch, and how long they took, into `figures`."""
    pause_point("eval")
    eval_started = time.perf_counter()
    s.ranks.sync_buffers(s.model)  # every rank evaluates its shard with rank 0's BatchNorm statistics
    tta = s.cfg.tta and s.spec["flip"]  # --tta: only for data that trains with flips
    figures.test_loss, figures.test_acc = evaluate(s.model, s.test_loader, s.runtime, tta)
    if s.val_loader is not None:
        figures.val_loss, figures.val_acc = evaluate(s.model, s.val_loader, s.runtime, tta)
    figures.eval_s = time.perf_counter() - eval_started


def epoch_metrics(s: Session, figures: EpochFigures) -> dict:
    """The epoch's reported figures (metrics.jsonl, the printed line, TensorBoard), rounded."""
    f, cfg, steps = figures, s.cfg, s.steps
    done = f.steps_done or steps  # steps of the epoch so far
    seen = done * cfg.batch_size * s.ranks.world  # all ranks' images
    in_warmup = f.warm_until and done - f.skipped <= f.warm_until  # evaluated before steady state began
    steady_images = seen - (f.skipped + (0 if in_warmup else f.warm_until)) * cfg.batch_size * s.ranks.world
    m = {
        "epoch": f.epoch + 1 if done == steps else round(f.epoch + done / steps, 4),
        "train_loss": round(f.loss_sum.item() / seen, 5),
        "train_acc": round(f.correct.item() / seen, 5),
        "test_loss": round(f.test_loss, 5),
        "test_acc": round(f.test_acc, 5),
        "images_per_s": round(steady_images / (f.trained - (f.started if in_warmup else f.steady_from)), 1),
        "epoch_s": round(time.perf_counter() - f.started, 2),
        "warmup_s": round(f.steady_from - f.started, 2) if f.warm_until else 0.0,
        "eval_s": round(f.eval_s, 2),
        "lr": lr_at(cfg, f.epoch * steps + done - 1, s.total_steps),
    }
    m.update(evaluation_extras(s, f))
    if s.runtime.compile:
        m["compiled_graphs"] = compiled_graphs()
        if not f.first and m["compiled_graphs"] > s.metrics[-1].get("compiled_graphs", 0):
            warn(f"torch.compile built new graphs during epoch {f.epoch + 1}: shapes or modes changed")
    return m


def evaluation_extras(s: Session, f: EpochFigures) -> dict:
    """What --eval-every, --val-split and --tta add to an evaluation's metrics (nothing without them)."""
    extras = {"step": f.epoch * s.steps + f.steps_done, "partial": True} if f.steps_done else {}
    if s.val_loader is not None:
        extras.update(val_loss=round(f.val_loss, 5), val_acc=round(f.val_acc, 5))
    if s.cfg.tta and s.spec["flip"]:
        extras["tta"] = True
    return extras


def checkpoint_state(s: Session, epochs_done, step=0, partial=None):
    """The checkpoint after `epochs_done` epochs and `step` steps of the next (with its `partial`
    sums): tensors and plain values only (see checkpoint.load)."""
    return {
        "format": FORMAT, "config": s.cfg.to_dict(), "data": s.spec, "model": s.model.state_dict(),
        "optimizer": s.optimizer.state_dict(),
        "scheduler": {"step": epochs_done * s.steps + step, "total_steps": s.total_steps},
        "scaler": s.scaler.state_dict(), "epoch": epochs_done, "rng": s.ranks.gather_rng(rng_states()), "metrics": s.metrics,
        "versions": {"engine": __version__, "torch": str(torch.__version__)}, "runtime": s.runtime.resolved(),
        "step": step, "partial": partial, "best": {"test_acc": s.best, "epoch": s.best_epoch},
        "data_fingerprint": s.fingerprint, "frozen": frozen(s.model),
    }


def save_partial(s: Session, epoch, step, loss_sum, correct):
    """A mid-epoch last.pt (--save-every): `step` steps of epoch `epoch` (0-based) done."""
    state = checkpoint_state(s, epoch, step, {"loss_sum": loss_sum.detach().cpu(), "correct": correct.detach().cpu()})
    with s.run.saving():
        save_atomic(state, s.run.path / "last.pt")
    s.clock.saved()


def save_epoch(s: Session, m, best_now, state=None):
    """last.pt (and best.pt if `best_now`), metrics.jsonl, curves.png and TensorBoard for the epoch `m`
    (`state`: the checkpoint, if not the one after epoch m["epoch"])."""
    state = state or checkpoint_state(s, m["epoch"])  # every rank: it gathers their RNG states
    if not s.ranks.is_main:
        return
    with interrupts_held(), s.run.saving():  # an epoch's files are written whole, or not at all
        save_atomic(state, s.run.path / "last.pt")  # the commit record: resume repairs the rest from it
        pause_point("commit")
        if best_now:
            save_atomic(state, s.run.path / "best.pt")
        s.run.write_metrics(s.metrics)
        s.run.plot(s.metrics)
        if s.tensorboard:
            s.tensorboard.log(m)
    s.clock.saved()


def record(s: Session, figures: EpochFigures):
    """Evaluate after `figures`' steps, check --target-acc, save and print. Epoch ends and the
    stop at the target write checkpoints (best.pt on the validation accuracy with --val-split);
    evaluations within an epoch that do not stop it only add a metrics entry."""
    evaluate_epoch(s, figures)
    m = epoch_metrics(s, figures)
    s.reached = m if s.watch.check(m) else None
    s.metrics.append(m)
    if figures.steps_done and not s.reached:
        if s.ranks.is_main:
            s.run.write_metrics(s.metrics)
    else:
        acc = figures.val_acc if s.val_loader is not None else figures.test_acc  # unrounded, as measured
        best_now = acc > s.best
        s.best = max(s.best, acc)
        s.best_epoch = m["epoch"] if best_now else s.best_epoch
        partial = {"loss_sum": figures.loss_sum.detach().cpu(), "correct": figures.correct.detach().cpu()}
        state = checkpoint_state(s, figures.epoch, figures.steps_done, partial) if figures.steps_done else None
        save_epoch(s, m, best_now, state)
    s.log(format_epoch(m))
    return m


def train(cfg: Config, resume=None, log=print):
    """Train as `cfg` says; `resume` is a checkpoint dict to continue. Returns (run dir, metrics).
    Under torchrun every rank calls it, inside the process group; only rank 0 logs."""
    with process_group(resolve_device(cfg.device)) as ranks:
        return train_ranks(cfg, resume, log if ranks.is_main else (lambda *_: None), ranks)


def train_ranks(cfg: Config, resume, log, ranks: Ranks):
    """train() as one of `ranks`."""
    say = (lambda *_: None) if cfg.quiet else log
    s = open_session(cfg, resume, say, ranks)
    s.log = log
    first = True  # the first epoch of this process times its first steps apart
    try:
        for epoch in range(s.start_epoch, s.cfg.epochs):
            figures = train_epoch(s, epoch, first)
            if s.reached:  # stopped within the epoch at --target-acc
                break
            m = record(s, figures)
            if figures.warm_until and s.runtime.compile:
                say(f"Warm-up: {m['warmup_s']:.1f} s for the first {figures.warm_until} steps (torch.compile), kept out of img/s")
            first = False
            if s.reached:
                break
    except KeyboardInterrupt:
        if not (s.run.path / "last.pt").exists():
            raise Interrupted(f"interrupted before the first epoch ended; nothing to resume in {s.run.path}") from None
        raise Interrupted(f"interrupted; completed epochs are saved: continue with engine train --resume {s.run.path}") from None
    finally:
        if s.tensorboard:
            s.tensorboard.close()
        s.run.close()
    which = "validation" if s.val_loader is not None else "test"
    say(f"Saved {Path(s.run.path) / 'last.pt'} (best {which} accuracy {s.best * 100:.1f}%: best.pt)")
    if s.watch.target is not None:
        log(s.watch.summary(s.reached, s.metrics))
    return s.run.path, s.metrics
