"""Putting a resumed run back: its weights and optimizer states (`restore`), the best epoch so far
(`best_of`), the run directory brought in step with last.pt (`repair_run`), and a session's whole
progress (`restore_progress`: states, RNG, epochs, steps, metrics, and what changed since).
"""

from engine.checkpoint import Checkpoint, load, restore_rng_states, save_atomic
from engine.errors import EngineError, first_line
from engine.recipe import freeze
from engine.runtime import warn
from engine.target import reached_in


def restore(checkpoint: Checkpoint, path, model, optimizer, scaler, ema=None, lookahead=None):
    """Load the weights, optimizer and scaler states of a checked checkpoint (see check_state), into
    `ema` (an engine.ema.WeightAverage, with --ema) the averaged weights and their step count, and into
    `lookahead` (an engine.lookahead.Lookahead, with --lookahead) its slow copy."""
    if ema is not None and checkpoint.ema is None:
        raise EngineError(f"--resume: {path} has no averaged weights (model_ema) although its run used --ema; it is damaged")
    if lookahead is not None and checkpoint.lookahead is None:
        raise EngineError(f"--resume: {path} has no lookahead copy (model_lookahead) although its run used --lookahead; "
                          "it is damaged")
    try:
        model.load_state_dict(checkpoint.model)
        optimizer.load_state_dict(checkpoint.optimizer)
        if checkpoint.scaler:
            scaler.load_state_dict(checkpoint.scaler)
        if ema is not None:
            ema.load_state_dict(checkpoint.ema, checkpoint.ema_updates)
        if lookahead is not None:
            lookahead.load_state_dict(checkpoint.lookahead)
    except (KeyError, ValueError, RuntimeError, TypeError) as error:
        raise EngineError(f"--resume: {path} does not fit this run's model or optimizer ({first_line(error, 160)})") from None


def best_of(checkpoint: Checkpoint):
    """(best accuracy, its epoch) so far, on the split that chooses best.pt (validation with --val-split,
    else test): the checkpoint's record, else its metrics' maximum."""
    if isinstance(checkpoint.best, dict):  # {"acc", "split", "epoch"}; checkpoints before 0.2 said "test_acc" for either
        return checkpoint.best.get("acc", checkpoint.best.get("test_acc")), checkpoint.best["epoch"]
    metrics = checkpoint.metrics or []
    best = max((i for i, m in enumerate(metrics) if "test_acc" in m), key=lambda i: metrics[i]["test_acc"], default=None)
    return (-1.0, 0) if best is None else (metrics[best]["test_acc"], best + 1)


def repair_run(run, checkpoint: Checkpoint, say, epochs_left=True):
    """last.pt is the commit record; bring the files written after it in step with it. An epoch
    writes last.pt, then best.pt, metrics.jsonl and curves.png: a kill between those renames
    left best.pt and the metrics one epoch behind, and this puts them right. A best.pt of an
    earlier epoch that is unreadable or not this run's (its metrics not the start of last.pt's)
    cannot be rebuilt: a warning, and True returned, so the best epoch from here on replaces it."""
    repaired = []
    rewritten = run.sync_metrics(checkpoint.metrics or [])
    if rewritten:
        repaired.append(" and ".join(rewritten))
    _, epoch = best_of(checkpoint)
    try:
        current = load(run.path / "best.pt")
    except EngineError:
        current = None
    lost = False
    if epoch and epoch == checkpoint.epoch and not checkpoint.step:  # last.pt is the best epoch itself
        if current is None or current.epoch != epoch:
            save_atomic(checkpoint.to_dict(), run.path / "best.pt")
            repaired.append("best.pt")
    elif epoch:
        metrics = checkpoint.metrics or []
        ours = (current is not None and abs(current.epochs_done - epoch) < 0.005  # 2.5: a stop within an epoch
                and current.metrics == metrics[:len(current.metrics or [])])
        if not ours:
            what = ("missing" if not (run.path / "best.pt").exists() else "unreadable" if current is None
                    else "not this run's (its metrics are not the start of last.pt's)")
            then = ("the best epoch from here on becomes best.pt" if epochs_left else
                    "no epoch is left to train: last.pt holds the final weights")
            warn(f"best.pt (epoch {epoch}) is {what} and cannot be rebuilt; {then}")  # even with --quiet
            lost = True
    if repaired:
        say(f"Repaired {' and '.join(repaired)} from last.pt (they were missing or behind it, as a kill leaves them)")
    return lost


def restore_progress(s, resume: Checkpoint, say):
    """A resumed run's weights, optimizer, scaler, RNG and progress (epochs, steps, metrics, best)."""
    path = s.run.path / "last.pt"
    restore(resume, path, s.model, s.optimizer, s.scaler, s.ema, s.lookahead)
    freeze(s.model, resume.frozen)  # what the fresh run froze (a whitened stem, --freeze)
    restore_rng_states(s.ranks.rng_of_rank(resume.rng))
    s.metrics, s.start_epoch, s.resume_step = list(resume.metrics), resume.epoch, resume.step
    s.best, s.best_epoch = best_of(resume)
    s.partial = resume.partial
    reached = reached_in(s.metrics)
    if reached:  # it stopped at --target-acc: nothing is left to train
        s.start_epoch, s.resume_step = s.cfg.epochs, 0
    if s.ranks.is_main and repair_run(s.run, resume, say, s.start_epoch < s.cfg.epochs):  # last.pt is the commit
        s.best, s.best_epoch = -1.0, 0  # record; a best.pt it cannot rebuild is replaced by the next best epoch
    step = s.resume_step
    if reached:
        say(f"Resuming {s.run.path}: it reached {reached['target_acc']:g}% at epoch {reached['epoch']:g} of "
            f"{s.cfg.epochs}, so nothing is left to train")
    else:
        steps = f", {step:,} step{'s' if step != 1 else ''} into epoch {s.start_epoch + 1}" if step else ""
        say(f"Resuming {s.run.path} after epoch {s.start_epoch} of {s.cfg.epochs}{steps}")
    now = s.runtime.resolved()  # cpu_threads: a CPU run's alone (a device changed is said as such)
    changed = [f"{k} {v} -> {now.get(k)}" for k, v in resume.runtime.items() if now.get(k, v) != v]
    if changed:  # another machine, or other runtime flags: the weights continue, the arithmetic changes
        warn(f"resuming on a different runtime: {', '.join(changed)}")
