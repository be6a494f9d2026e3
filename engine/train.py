"""train(cfg): the training loop, its per-epoch metrics, checkpoints and run directory.

One call does a whole run: resolve the runtime, read the data, build the model, then for each
epoch train, evaluate, report and checkpoint. Speed is measured without per-step syncs; the
first steps of a process (compile and allocation warm-up) are timed apart from steady state.
"""

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from engine import __version__
from engine.checkpoint import FORMAT, interrupts_held, restore_rng_states, rng_states, save_atomic
from engine.config import Config
from engine.data import check_batch_size, dataset_label, load_dataset
from engine.errors import EngineError, Interrupted
from engine.evaluate import evaluate
from engine.loader import BatchLoader
from engine.models import build_model, count_parameters
from engine.optim import build_optimizer, lr_at, set_lr
from engine.report import RunDir, TensorBoard, default_run_dir, format_epoch, progress
from engine.runtime import Runtime, compiled_graphs, setup_backends, warn

WARMUP_STEPS = 3  # steps of a process's first epoch timed as warm-up, not steady state
RUNS = "runs"  # where default-named runs go, and runs/latest


def train(cfg: Config, resume=None, log=print):
    """Train as `cfg` says; `resume` is a checkpoint dict to continue. Returns (run dir, metrics)."""
    say = (lambda *_: None) if cfg.quiet else log
    cfg = cfg.with_absolute_paths()
    runtime = Runtime.from_config(cfg)
    if cfg.tensorboard:
        TensorBoard.require()
    if not cfg.out:
        cfg.out = str(default_run_dir(cfg.model, dataset_label(cfg.data), RUNS))
    run = RunDir(cfg.out, resuming=resume is not None)
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
        model = build_model(cfg.model, data.shape, len(data.classes))
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
        restore_rng_states(resume["rng"])
        metrics, start_epoch = list(resume["metrics"]), resume["epoch"]
        best = max((m["test_acc"] for m in metrics), default=-1.0)
        say(f"Resuming {run.path} after epoch {start_epoch} of {cfg.epochs}")

    device = runtime.device
    train_loader = BatchLoader(data.train_x, data.train_y, cfg.batch_size, spec["mean"], spec["std"], device=device,
                               train=True, flip=spec["flip"], seed=cfg.seed, channels_last=cfg.channels_last)
    test_loader = BatchLoader(data.test_x, data.test_y, cfg.batch_size, spec["mean"], spec["std"], device=device,
                              train=False, channels_last=cfg.channels_last)
    steps = len(train_loader)
    total_steps = steps * cfg.epochs
    run.write_config(cfg.to_dict(), spec)
    if run.path.parent.resolve() == (Path.cwd() / RUNS).resolve():  # runs/latest: the newest run in runs/
        run.point_latest()
    tensorboard = TensorBoard(run.path) if cfg.tensorboard else None
    say(f"Run: {run.path} ({len(data.train_x):,} train / {len(data.test_x):,} test images, "
        f"{steps} steps of {cfg.batch_size} an epoch, {cfg.epochs} epoch{'s' if cfg.epochs > 1 else ''})")

    warming = True  # the first epoch of this process times its first steps apart
    try:
        for epoch in range(start_epoch, cfg.epochs):
            started = time.perf_counter()
            model.train()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.int64)
            warm_until = WARMUP_STEPS if warming and steps > 2 * WARMUP_STEPS else 0
            steady_from, bar = started, progress(steps, epoch + 1, cfg.quiet)
            for i, (x, y, _) in enumerate(train_loader.epoch(epoch)):
                set_lr(optimizer, lr_at(cfg, epoch * steps + i, total_steps))
                with runtime.autocast():
                    logits = model(x)  # (B, classes)
                    loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                loss_sum += loss.detach().float() * len(y)
                correct += (logits.detach().argmax(1) == y).sum()
                if i + 1 == warm_until:
                    runtime.sync()
                    steady_from = time.perf_counter()
                if not bar.disable:
                    bar.update()
                    if i % 25 == 0:
                        bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.close()
            runtime.sync()
            trained = time.perf_counter()
            eval_started = time.perf_counter()
            test_loss, test_acc = evaluate(model, test_loader, runtime)
            eval_s = time.perf_counter() - eval_started
            seen = steps * cfg.batch_size
            steady_images = seen - warm_until * cfg.batch_size
            m = {
                "epoch": epoch + 1,
                "train_loss": round(loss_sum.item() / seen, 5),
                "train_acc": round(correct.item() / seen, 5),
                "test_loss": round(test_loss, 5),
                "test_acc": round(test_acc, 5),
                "images_per_s": round(steady_images / (trained - steady_from), 1),
                "epoch_s": round(time.perf_counter() - started, 2),
                "warmup_s": round(steady_from - started, 2) if warm_until else 0.0,
                "eval_s": round(eval_s, 2),
                "lr": lr_at(cfg, (epoch + 1) * steps - 1, total_steps),
            }
            if runtime.compile:
                m["compiled_graphs"] = compiled_graphs()
                if not warming and m["compiled_graphs"] > metrics[-1].get("compiled_graphs", 0):
                    warn(f"torch.compile built new graphs during epoch {epoch + 1}: shapes or modes changed")
            metrics.append(m)
            best_now = test_acc > best
            best = max(best, test_acc)
            state = {
                "format": FORMAT, "config": cfg.to_dict(), "data": spec, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": {"step": (epoch + 1) * steps, "total_steps": total_steps},
                "scaler": scaler.state_dict(), "epoch": epoch + 1, "rng": rng_states(), "metrics": metrics,
                "versions": {"engine": __version__, "torch": str(torch.__version__)},
            }
            with interrupts_held():  # an epoch's files are written whole, or not at all
                save_atomic(state, run.path / "last.pt")
                if best_now:
                    save_atomic(state, run.path / "best.pt")
                run.write_metrics(metrics)
                run.plot(metrics)
                if tensorboard:
                    tensorboard.log(m)
            log(format_epoch(m))
            if warm_until and runtime.compile:
                say(f"Warm-up: {m['warmup_s']:.1f} s for the first {warm_until} steps (torch.compile), kept out of img/s")
            warming = False
    except KeyboardInterrupt:
        if not (run.path / "last.pt").exists():
            raise Interrupted(f"interrupted before the first epoch ended; nothing to resume in {run.path}") from None
        raise Interrupted(f"interrupted; completed epochs are saved: continue with engine train --resume {run.path}") from None
    finally:
        if tensorboard:
            tensorboard.close()
    say(f"Saved {Path(run.path) / 'last.pt'} (best test accuracy {best * 100:.1f}%: best.pt)")
    return run.path, metrics
