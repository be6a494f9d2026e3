"""A run's session: everything set up before its first step, and what it carries between epochs.

`open_session(cfg, resume)` resolves the runtime and the run directory, reads the data, builds the
model, optimizer and scaler, restores a checkpoint when resuming (and repairs the run directory
from it), and returns the `Session` that `engine.train` steps, evaluates and saves.
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.checkpoint import (SaveClock, best_of, check_resume, check_state, data_fingerprint, repair_run, restore,
                               restore_rng_states)
from engine.config import Config, parse_duration
from engine.data import check_batch_size, dataset_label, load_dataset
from engine.distributed import Ranks
from engine.errors import EngineError
from engine.loader import BatchLoader
from engine.models import build_model, count_parameters
from engine.optim import build_optimizer
from engine.recipe import freeze, init_from_data
from engine.report import RunDir, TensorBoard, default_run_dir
from engine.runtime import Runtime, setup_backends, warn
from engine.target import Watch, reached_in

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
    tensorboard = TensorBoard(run.path, len(train_loader)) if cfg.tensorboard and ranks.is_main else None
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
