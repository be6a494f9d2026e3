"""A run's session: everything set up before its first step, and what it carries between epochs.

`open_session(cfg, resume)` resolves the runtime and the run directory, then in three parts reads
the data (`open_data`), builds and initialises the model (`open_model`: the reference, the probe,
--init-from, --freeze) and, when resuming, restores the checkpoint's progress (`engine.restore.restore_progress`,
which also repairs the run directory); it returns the `Session` that `engine.train` steps,
evaluates and saves.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.checkpoint import Checkpoint, SaveClock, check_state
from engine.config import Config
from engine.config_types import parse_duration
from engine.confusion import loss_weights
from engine.data import Dataset, InputSpec, check_batch_size, dataset_label, load_dataset
from engine.data.layout import WHOLE
from engine.distributed import Ranks
from engine.ema import WeightAverage
from engine.evaluate import tta_level
from engine.errors import EngineError, UsageError
from engine.fast_paths import choose_compile, choose_precision
from engine.loader import BatchLoader
from engine.lookahead import Lookahead, check_steps
from engine.models import count_parameters
from engine.models.build import build, check_rebuilds
from engine.models.memory_format import fit_memory_format
from engine.models.probe import check_fits, probe_batch
from engine.models.reference import ModelRef, parse_args, parse_model, reference_of, reopen
from engine.models.user_code import load_code, with_neighbours
from engine.optim import bn_lr_scale_note, build_optimizer, muon_flags_note
from engine.recipe import freeze, init_from_data
from engine.report import RunDir, default_run_dir
from engine.restore import restore_progress
from engine.resume import check_resume, data_fingerprint
from engine.runtime import Runtime, setup_backends, warn
from engine.run_loaders import eval_loader, loaders, screen_loaders
from engine.target import Watch, reached_in
from engine.tensorboard_events import TensorBoard

RUNS = "runs"  # where default-named runs go, and runs/latest


@dataclass
class Session:
    """What a run holds from one epoch to the next: set up by `open_session`, changed by each epoch."""

    cfg: Config  # with absolute paths and the run directory filled in
    runtime: Runtime
    run: RunDir
    spec: InputSpec  # what the checkpoints keep of the data (Dataset.spec(), or the resumed run's)
    ref: ModelRef  # what rebuilds the model: the checkpoints keep it
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
    confusion: object = None  # engine.confusion.Confusion of the latest test evaluation (confusion.png at the end)
    class_weights: torch.Tensor | None = None  # (classes,) the loss's weights with --class-weights auto
    ema: WeightAverage | None = None  # --ema: the weight average, updated after each step
    lookahead: Lookahead | None = None  # --lookahead: the slow copy the weights are pulled to
    eval_plan: object = None  # engine.compile_eval.EvalPlan: --compile: whether evaluations compile
    screen: list | None = None  # --target-acc: BatchLoaders of the test set's SCREEN_PARTS (engine.target)
    losses: object = None  # engine.faults.LossWatch: non-finite training losses in a row, across epochs

    @property
    def evaluated(self):
        """What evaluations measure (and so what chooses best.pt and meets --target-acc): the weight
        average with --ema, else the model."""
        return self.ema.module if self.ema is not None else self.model

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


def open_session(cfg: Config, resume: Checkpoint | None = None, say=print, ranks=None, model=None) -> Session:
    """Resolve the runtime and run directory, read the data, build the model (or take `model`, a
    module the caller built), optimizer and scaler, restore `resume` if given, and write config.json.
    Under torchrun `ranks` says which rank this is: rank 0 alone writes the run directory."""
    ranks = ranks or Ranks()
    ref = model_reference(cfg, resume, model, say)  # before any file is written: a bad --model is one line
    cfg = dataclasses.replace(cfg, model=ref.label) if model is not None else cfg
    cfg = cfg.with_absolute_paths()
    runtime = Runtime.from_config(cfg)
    runtime.device = ranks.device or runtime.device  # cuda:LOCAL_RANK under torchrun
    if cfg.tensorboard:
        TensorBoard.require()
    if not cfg.out:
        cfg.out = ranks.broadcast(str(default_run_dir(model_label(ref), dataset_label(cfg.data), RUNS)))
    run = RunDir(cfg.out, resuming=resume is not None, create=ranks.is_main, data=cfg.data)
    try:
        data, spec, fingerprint = open_data(cfg, resume, run, ranks, say)
        setup_backends(runtime.device, cfg.seed)
        model = open_model(cfg, ref, data, spec, resume, ranks, model, run, say)
        fit_memory_format(cfg, runtime, model, ref, data.shape, say, probe_batch(cfg.batch_size))  # before the loaders
        train_loader, test_loader = loaders(cfg, data, spec, runtime, ranks, say)
        screen = screen_loaders(cfg, data, spec, runtime, ranks) if cfg.target_acc is not None else None
        tta_level(cfg, spec)  # --tta 2 on images too small to shift is one line before any work
        choose_precision(cfg, runtime, model, ref, resume, ranks, train_loader, say)
        choose_compile(cfg, runtime, model, ref, ranks, train_loader, say)
        ema = WeightAverage(model, cfg.ema) if cfg.ema is not None else None  # copied before compile (engine/ema.py)
        in_place = runtime.compiles_training
        model = runtime.prepare(model, compile=in_place, name=ref.label, shape=data.shape)
        if ema is not None:
            ema.prepare(lambda averaged: runtime.prepare(averaged, compile=in_place, name=ref.label, shape=data.shape),
                        model)
        say(f"Model: {model_label(ref)}, {count_parameters(model):,} parameters, input {'x'.join(map(str, data.shape))}, "
            f"{len(data.classes)} classes; {runtime.describe()}")
        if ema is not None:
            say(f"Weight average: decay {cfg.ema:g} a step once warmed up (a horizon of about "
                f"{1 / (1 - cfg.ema):,.0f} steps); evaluations, best.pt and export use it")
        # a bf16 run's own precision for Muon's orthogonalisation, as airbench94_muon's; fp32 for the rest
        if resume is not None:  # what the fresh run froze (a whitened stem) before Muon's line counts what it steps
            freeze(model, resume.frozen)
        optimizer = build_optimizer(cfg, model, torch.bfloat16 if runtime.amp_dtype == torch.bfloat16 else torch.float32)
        if hasattr(optimizer, "describe"):
            say(optimizer.describe())
        for note in (bn_lr_scale_note(cfg, model), muon_flags_note(cfg, model)):  # flags that change nothing here
            if note:
                say(note)
        scaler = runtime.grad_scaler()
        session = Session(cfg, runtime, run, spec, ref, model, optimizer, scaler, train_loader, test_loader,
                          None, [], ranks=ranks, fingerprint=fingerprint,
                          clock=SaveClock(parse_duration(cfg.save_every) if ranks.world == 1 else None))  # DDP: epoch ends only
        session.ema, session.screen = ema, screen
        if cfg.lookahead:
            check_steps(session.total_steps)  # fewer steps than a sync would end where it started
        session.lookahead = Lookahead(model) if cfg.lookahead else None  # of the prepared model: its device and format
        if cfg.lookahead:
            say("Lookahead: every 5 steps the weights move to their slow average, and become it at the last step")
        if ranks.world > 1 and cfg.save_every not in (type(cfg).__dataclass_fields__["save_every"].default, "off"):
            say(f"--save-every {cfg.save_every}: under --nproc, last.pt is written at epoch ends only")
        session.class_weights = loss_weights(cfg.class_weights, data.train_y, data.classes, runtime.device, say)
        if resume is not None:
            restore_progress(session, resume, say)
        # after the restore: DDP registers the parameters that take gradients when it wraps the model,
        # and a resumed run freezes again what the fresh one froze (a whitened stem, --freeze)
        session.ddp = ranks.wrap(model, ref.user_code) if ranks.world > 1 else None
        before = next((m["elapsed_s"] for m in reversed(session.metrics) if "elapsed_s" in m), 0.0)  # a resumed run's
        watch = Watch(cfg.target_acc, cfg.eval_every, session.steps, cfg.epochs, before)  # clock runs on
        if runtime.plans_compile and not runtime.compile_training:  # evaluations: compiled where that pays
            from engine.compile_eval import EvalPlan

            evaluations = watch.evaluations(session.start_epoch)
            session.eval_plan = EvalPlan(runtime, ref, (test_loader.batch_size, *data.shape), evaluations, cfg.resolved_cache_dir(), say)
        if data.val_x is not None:
            session.val_loader = eval_loader(cfg, data.val_x, data.val_y, spec, runtime, ranks)  # the test set's shape
        if ranks.is_main:
            run.write_config(cfg.to_dict(), dataclasses.asdict(spec), runtime.resolved())
            if run.path.parent.resolve() == (Path.cwd() / RUNS).resolve():  # runs/latest: the newest run in runs/
                kept = run.point_latest()
                if kept:
                    warn(kept)
        session.tensorboard = TensorBoard(run.path, session.steps) if cfg.tensorboard and ranks.is_main else None
        session.watch = watch
        if watch.note(cfg.eval_every, session.steps):
            say(watch.note(cfg.eval_every, session.steps))
        session.reached = reached_in(session.metrics)
        per_rank = f" per rank x {ranks.world} ranks = {cfg.batch_size * ranks.world} global" if ranks.world > 1 else ""
        val = f" / {len(data.val_x):,} validation" if data.val_x is not None else ""
        left = len(data.train_x) - session.steps * cfg.batch_size * ranks.world  # the loader's batches are all full
        left = f", {left:,} left out of each (a new draw every epoch)" if left > 0 else ""
        say(f"Run: {run.path} ({len(data.train_x):,} train{val} / {len(data.test_x):,} test images, "
            f"{session.steps} step{'s' if session.steps != 1 else ''} of {cfg.batch_size}{per_rank} an epoch{left}, "
            f"{cfg.epochs} epoch{'s' if cfg.epochs > 1 else ''})")
        return session
    except BaseException:  # a failure anywhere before the run starts lets go of its folder (and its lock), and of
        if ranks.is_main:  # the config.json it wrote (a reader leaving the pipe at the Run: line): nothing to resume
            run.discard_unsaved()  # (a resumed run's files stay: it has a last.pt)
        run.discard_if_unused()  # the lock goes in every case
        raise


def model_label(ref: ModelRef):
    """A short name for a run's model: cifar_cnn, resnet18, Net."""
    return ref.name


def model_reference(cfg: Config, resume: Checkpoint | None, model, say) -> ModelRef:
    """What builds this run's model: `cfg.model` parsed, the resumed run's reference (its user code
    named again), or the class of the caller's `model`."""
    if model is not None:
        ref = reference_of(model, parse_args(cfg.model_args))
        named = cfg.model != Config.__dataclass_fields__["model"].default  # the default names nothing
        if named and not names_class(parse_model(cfg.model), type(model)):
            raise UsageError(f"Config(model={cfg.model!r}) and train(model=...) name different networks (the module "
                             f"passed is {ref.label}); give one of them")
        if resume is not None:
            reopen(resume.ref, ref, "--resume's checkpoint")
        return ref
    given = parse_model(cfg.model, cfg.model_args)
    ref = reopen(resume.ref, given, "--resume's checkpoint") if resume is not None else given
    if ref.user_code:
        load_code(ref)  # import it now: a missing name or a failing import is one line before any work
    return with_neighbours(ref)


def names_class(given: ModelRef, cls) -> bool:
    """Whether a reference (`Config(model=...)`) names the class `cls`: the same name in the same file or
    module. A built-in or torchvision name never names a class the caller built."""
    import sys

    if given.name != cls.__qualname__ or not given.user_code:
        return False
    if given.kind == "module":
        return given.file == cls.__module__
    source = getattr(sys.modules.get(cls.__module__), "__file__", None)
    return source is not None and Path(source).resolve() == Path(given.file).resolve()


def open_data(cfg: Config, resume: Checkpoint | None, run: RunDir, ranks: Ranks, say):
    """(the Dataset, its InputSpec, its fingerprint); a resumed run's spec, once the data is shown to
    be the same."""
    if cfg.test_split == WHOLE:
        raise UsageError(f"--test-split {WHOLE} is for engine eval (every image a test image); a training run holds out "
                         "a percentage such as 10%")
    data = load_dataset(cfg, say)
    check_batch_size(data, cfg.batch_size, ranks.world)
    fingerprint = data_fingerprint(data)
    if resume is None:
        return data, data.spec(), fingerprint
    total = len(data.train_x) // (cfg.batch_size * ranks.world) * cfg.epochs
    check_resume(resume, run.path / "last.pt", fingerprint, total, cfg.data, ranks.world)
    if resume.spec.classes != data.classes or list(resume.spec.shape) != list(data.shape):
        raise EngineError(f"--resume: the data at {cfg.data} no longer matches the run's (classes or image shape changed)")
    return data, resume.spec, fingerprint


def open_model(cfg: Config, ref: ModelRef, data: Dataset, spec: InputSpec, resume: Checkpoint | None, ranks: Ranks,
               model, run: RunDir, say):
    """The run's model on the CPU, checked to fit the data and initialised: a fresh run's
    data-dependent init or --init-from, then --freeze; a resumed run's weights come later (restore)."""
    from engine.models.weights import freeze_prefixes, init_from

    if model is None:
        model = build(ref, data.shape, len(data.classes), batch=cfg.batch_size)
        if ref.kind == "builtin" and cfg.batch_size == 1:  # the zoo is sized to the data, not probed: at batch 1
            try:  # a BatchNorm over 1x1 features (fast_cifar on 16x16 images) cannot train
                check_fits(model, ref, data.shape, len(data.classes), 1)
            except UsageError as error:
                raise UsageError(f"{error}; train with --batch-size 2 or more, or larger images") from None
    else:
        check_fits(model, ref, data.shape, len(data.classes), probe_batch(cfg.batch_size), built=True)  # lazy: shaped
        check_rebuilds(model, ref, data.shape, len(data.classes))
        model = copy_of(model)  # the caller's module gets the trained weights when the run completes (train())
    model = ranks.sync_batchnorm(model)
    ranks.seed(cfg.seed)  # after the common initialisation: dropout differs per rank
    if resume is not None:
        check_state(resume, model, run.path / "last.pt")  # one line naming a mismatch
        return model
    fresh = init_from(model, cfg.init_from, say) if cfg.init_from else ()  # the keys it re-initialised
    if not cfg.init_from:  # e.g. fast_cifar's whitened stem
        init_from_data(model, data.train_x, spec, cfg.seed, say)
    if cfg.freeze:
        freeze_prefixes(model, cfg.freeze, say, fresh, loaded=bool(cfg.init_from))
    return model


def copy_of(model):
    """The module a run trains in place of the caller's (`train(model=...)`)."""
    from engine.models.copying import duplicate

    return duplicate(model, "train(model=...), which trains a copy of your module,")
