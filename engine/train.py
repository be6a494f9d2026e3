"""train(cfg): the training loop, its evaluations and per-epoch metrics.

One call does a whole run: `open_session` (engine/session.py) resolves the runtime, reads the
data and builds the model; then each epoch is `train_epoch` (one `train_step` per batch),
`evaluate_epoch`, `epoch_metrics` (engine/epoch_figures.py) and `save_epoch` (engine/run_files.py:
the checkpoints and the run directory's files). Speed is measured without per-step syncs; the first steps of a process
(compile and allocation warm-up) are timed apart from steady state.
"""

import shlex
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.config import Config
from engine.confusion import Confusion
from engine.distributed import Ranks, process_group
from engine.errors import Interrupted, UsageError
from engine.evaluate import evaluate, evaluate_screened, tta_level, tta_note
from engine.faults import CHECK_EVERY, LossWatch, check_outputs, pause_point
from engine.isolation import kept_global_state
from engine.optim import lr_at, set_lr, stop_finished
from engine.epoch_figures import EpochFigures, epoch_metrics
from engine.report import format_epoch, progress
from engine.run_files import checkpoint_state, save_epoch, save_partial, write_confusion
from engine.runtime import resolve_device
from engine.session import Session, open_session
from engine.target import note_call, short_of

WARMUP_STEPS = 3  # steps of a process's first epoch timed as warm-up, not steady state


def train_step(s: Session, x, y, step):
    """One optimizer step on the batch x (B, C, H, W), y (B,) at global `step`; returns the
    detached loss () and logits (B, classes)."""
    set_lr(s.optimizer, lr_at(s.cfg, step, s.total_steps), epoch=step / s.steps)  # epoch: see set_lr
    with s.runtime.autocast():
        logits = s.net(x)  # (B, classes)
        loss = F.cross_entropy(logits, y, weight=s.class_weights, label_smoothing=s.cfg.label_smoothing)
    s.optimizer.zero_grad(set_to_none=True)
    s.scaler.scale(loss).backward()
    s.scaler.step(s.optimizer)
    s.scaler.update()
    if s.lookahead is not None:
        s.lookahead.after_step(s.model, step + 1, s.total_steps)  # --lookahead: every 5 steps (engine/lookahead.py)
    if s.ema is not None:
        s.ema.update(s.model)  # --ema: the average follows every step (engine/ema.py)
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
    fresh = epoch == 0 and not skip and not s.metrics  # no update yet: a NaN now is not the learning rate's
    s.losses = s.losses or LossWatch(device, s.cfg.lr, fresh=fresh)  # a streak runs on over an epoch's end
    steps, watch = s.steps, s.losses
    warm_until = WARMUP_STEPS if first and steps - skip > 2 * WARMUP_STEPS else 0
    steady_from, bar = started, progress(steps - skip, epoch + 1, s.cfg.quiet)
    for i, (x, y, _) in enumerate(s.train_loader.epoch(epoch, skip=skip), start=skip):
        loss, logits = train_step(s, x, y, epoch * steps + i)
        loss_sum += loss.float() * len(y)
        correct += (logits.argmax(1) == y).sum()
        if s.watch.due(epoch, i + 1):  # --eval-every within the epoch; --target-acc may stop the run here
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
        due = i + 1 < steps and s.clock.due()  # a mid-epoch checkpoint (--save-every), read once
        if (i + 1) % CHECK_EVERY == 0 or i + 1 == steps or due:
            # a checkpoint follows at `due` and at the epoch's end: never one of non-finite weights
            watch.check(epoch, i + 1, s.model if due or i + 1 == steps else None)
            if due:
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
    if s.ema is not None:
        s.ranks.sync_buffers(s.ema.module)  # ... and the average's, which each rank averaged from its own
    tta = tta_level(s.cfg, s.spec)
    s.confusion = Confusion(s.spec.classes, s.runtime.device)  # counted on the device as it goes: no extra pass
    model = s.eval_plan.model(s.evaluated) if s.eval_plan else s.evaluated  # --compile: compiled where it pays
    share = 1.0
    if figures.steps_done and s.screen:  # --target-acc within an epoch: a screen first (engine.target)
        total = len(s.test_loader.x)
        figures.test_loss, figures.test_acc, seen, whole = evaluate_screened(
            model, s.screen, s.runtime, lambda right, read: short_of(s.watch.target, right, read, total), tta,
            s.confusion)
        if not whole:
            figures.evaluated, figures.screened, share, s.confusion = False, seen, seen / total, None
    else:
        figures.test_loss, figures.test_acc = evaluate(model, s.test_loader, s.runtime, tta, s.confusion)
    if s.val_loader is not None and figures.evaluated:
        figures.val_loss, figures.val_acc = evaluate(model, s.val_loader, s.runtime, tta)
    figures.eval_s = time.perf_counter() - eval_started
    if s.eval_plan:
        s.eval_plan.timed(figures.eval_s, share)


def record(s: Session, figures: EpochFigures):
    """Evaluate after `figures`' steps (unless `figures.evaluated` is False: an epoch end that
    --eval-every N > 1 skips), check --target-acc, save and print. Epoch ends and the stop at the
    target write checkpoints (best.pt on the validation accuracy with --val-split, only where
    evaluated); evaluations within an epoch that do not stop it only add a metrics entry."""
    if figures.evaluated:
        evaluate_epoch(s, figures)
        losses = {"test": figures.test_loss, **({"validation": figures.val_loss} if s.val_loader is not None else {})}
        check_outputs(losses, figures.epoch, figures.steps_done, s.cfg.lr)  # before any checkpoint of such a model
    m = epoch_metrics(s, figures)
    s.reached = m if s.watch.check(m) else None
    s.metrics.append(m)
    if figures.steps_done and not s.reached:
        if s.ranks.is_main:
            s.run.write_metrics(s.metrics)
            if s.tensorboard:
                s.tensorboard.log(m)
    else:
        acc = figures.val_acc if s.val_loader is not None else figures.test_acc  # unrounded, as measured
        best_now = figures.evaluated and acc > s.best
        s.best = acc if best_now else s.best
        s.best_epoch = m["epoch"] if best_now else s.best_epoch
        partial = {"loss_sum": figures.loss_sum.detach().cpu(), "correct": figures.correct.detach().cpu()}
        state = checkpoint_state(s, figures.epoch, figures.steps_done, partial) if figures.steps_done else None
        save_epoch(s, m, best_now, state, announce=lambda: s.log(format_epoch(m)))
        return m
    s.log(format_epoch(m))
    return m


def settle_limits(s: Session, epoch):
    """Before `epoch`: the model's epoch-limited parameters whose epochs are over stop taking
    gradients (engine.optim.stop_finished), unless the training step is compiled, where a changed
    requires_grad would recompile it for more than the gradient saves (their lr of 0 holds them
    still either way). DDP registers the parameters that take gradients when it wraps the model,
    so the wrapper is made again."""
    if s.runtime.compiles_training:
        return
    if stop_finished(s.model, epoch) and s.ddp is not None:
        s.ddp = s.ranks.wrap(s.model, s.ref.user_code)


def train(cfg: Config, resume=None, log=print, model=None):
    """Train as `cfg` says. Returns (run dir, metrics).

    resume: a Checkpoint to continue (engine.resume.resume_config gives it with its config).
    model: an nn.Module you built (airbench's make_net seam) instead of `cfg.model`; its class is
    recorded as the checkpoint's reference, which `engine eval/export --model FILE.py:NAME` reloads.
    The engine trains a copy of it (in its own memory format, perhaps reordered or compiled) and,
    when the run completes, loads the trained weights (last.pt's) into your module.
    A model's recipe (engine.recipe.apply_recipe) is the command line's: pass its values in `cfg`.
    The caller's random generators and the process settings a run makes are put back on return
    (engine.isolation). Under torchrun every rank calls it; it joins the process group (or uses the one the
    caller joined, which stays joined) and only rank 0 logs."""
    note_call()  # a later call's run clock starts here (engine.target.run_started)
    check_arguments(cfg, resume, model)
    log = (lambda *_: None) if log is None else log  # log=None: silent, as the caller meant
    if type(model).__name__ == "OptimizedModule":  # torch.compile(net): net trains, and the caller's wrapper sees it
        from engine.models.build import uncompiled

        model = uncompiled(model, "train(model=...) was given")
    with kept_global_state(), process_group(resolve_device(cfg.device), say=(lambda *_: None) if cfg.quiet else log) as ranks:
        return train_ranks(cfg, resume, log if ranks.is_main else (lambda *_: None), ranks, model)


def check_arguments(cfg: Config, resume, model):
    """One UsageError for an argument of the wrong kind, before any work."""
    from torch import nn

    from engine.checkpoint import Checkpoint

    if not isinstance(cfg, Config):
        raise UsageError(f"train() takes an engine.config.Config, not {type(cfg).__name__}")
    cfg.validate()  # fields changed since it was made are checked again
    if resume is not None and not isinstance(resume, Checkpoint):
        raise UsageError("train(resume=...) takes the Checkpoint that engine.resume.resume_config(RUN_DIR) returns "
                         "with its Config: cfg, checkpoint = resume_config(RUN_DIR); train(cfg, resume=checkpoint)")
    if resume is not None:
        from engine.resume import check_resumed_config

        check_resumed_config(cfg, resume)
    if model is not None and not isinstance(model, nn.Module):
        what = f"the class {model.__name__}" if isinstance(model, type) else f"a {type(model).__name__}"
        raise UsageError(f"train(model=...) takes a module you built (e.g. Net()), not {what}; to name the code "
                         "instead, give Config(model='nets.py:Net')")


def train_ranks(cfg: Config, resume, log, ranks: Ranks, model=None):
    """train() as one of `ranks`."""
    say = (lambda *_: None) if cfg.quiet else log
    given = model  # open_session trains a copy of it (engine.session.copy_of)
    s = open_session(cfg, resume, say, ranks, model)
    s.log = log
    first, trained = True, False  # the first epoch of this process times its first steps apart
    try:
        note = tta_note(s.cfg, s.spec)
        if note:
            say(note)
        if s.cfg.flip == "alternate" and not s.spec.flip:
            say("--flip alternate: this data trains without flips (single-channel images, often digits or scans, where a "
                "mirror image is another image), so no image is flipped")
        for epoch in range(s.start_epoch, s.cfg.epochs):
            trained = True
            settle_limits(s, epoch)
            figures = train_epoch(s, epoch, first)
            if s.reached:  # stopped within the epoch at --target-acc
                break
            figures.evaluated = s.watch.evaluates(epoch)
            m = record(s, figures)
            if figures.warm_until and s.runtime.compile and not s.runtime.eager_training:
                say(f"Warm-up: {m['warmup_s']:.1f} s for the first {figures.warm_until} steps (torch.compile), kept out of img/s")
            first = False
            if s.reached:
                break
        write_confusion(s)  # the last evaluation's matrix, after the timed epochs
    except KeyboardInterrupt:
        if not (s.run.path / "last.pt").exists():
            if s.ranks.is_main:  # rank 0 alone writes the run directory
                s.run.discard_unsaved()
            raise Interrupted(f"interrupted before the first checkpoint; nothing of {s.run.path} was kept (the same "
                              "command starts the run again)") from None
        code = f" --model {shlex.quote(s.ref.label)}" if s.ref.user_code else ""  # user code is named again
        code += f" --nproc {s.ranks.world}" if s.ranks.world > 1 else ""  # a run resumes with its process count
        raise Interrupted(f"interrupted; the run up to its last checkpoint is saved: continue with engine train --resume "
                          f"{s.run.path}{code}") from None
    except (Exception, SystemExit):  # a failure before the first checkpoint (the model's code, a full disk, its
        # sys.exit()) leaves nothing behind
        if s.tensorboard:
            s.tensorboard.close()
        if s.ranks.is_main:  # rank 0 alone writes the run directory
            s.run.discard_unsaved()
        raise
    finally:
        if s.tensorboard:
            s.tensorboard.close()
        s.run.close()
    which = "validation" if s.val_loader is not None else "test"
    if not trained:  # a finished run resumed: last.pt as it was
        best = f"best {which} accuracy {s.best * 100:.1f}%: best.pt; " if s.best >= 0 else ""  # -1: best.pt lost
        log(f"Nothing left to train: {s.run.path} finished ({best}confusion.png written again)")  # --quiet too: the
        # command's only result, in place of the epoch lines it prints
    else:
        say(f"Saved {Path(s.run.path) / 'last.pt'} (best {which} accuracy {s.best * 100:.1f}%: best.pt; "
            "the last model's confusion matrix: confusion.png)")
    if s.watch.target is not None:
        log(s.watch.summary(s.reached, s.metrics, trained))
    if given is not None:
        given.load_state_dict(s.model.state_dict())  # the caller's module ends trained, in its own format
    return s.run.path, s.metrics

