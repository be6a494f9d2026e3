"""What a training run writes: the checkpoint of its state (`checkpoint_state`), last.pt and best.pt
with metrics.jsonl, curves.png and TensorBoard at an epoch's end (`save_epoch`) or last.pt alone
within one (`save_partial`, --save-every), and confusion.png/.json at the run's end
(`write_confusion`). Every rank builds the checkpoint (it gathers their RNG states); rank 0 writes.
"""

import json

import torch

from engine import __version__
from engine.checkpoint import Checkpoint, interrupts_held, rng_states, save
from engine.confusion import Confusion
from engine.data import dataset_label
from engine.evaluate import evaluate, tta_level
from engine.faults import pause_point
from engine.recipe import frozen
from engine.session import Session


def checkpoint_state(s: Session, epochs_done, step=0, partial=None) -> Checkpoint:
    """The checkpoint after `epochs_done` epochs and `step` steps of the next (with its `partial`
    sums)."""
    return Checkpoint(
        config=s.cfg.to_dict(), spec=s.spec, model=s.model.state_dict(), epoch=epochs_done, ref=s.ref,
        optimizer=s.optimizer.state_dict(), scheduler={"step": epochs_done * s.steps + step, "total_steps": s.total_steps},
        scaler=s.scaler.state_dict(), rng=s.ranks.gather_rng(rng_states()), metrics=s.metrics, step=step, partial=partial,
        best={"acc": s.best, "split": "validation" if s.val_loader is not None else "test", "epoch": s.best_epoch},
        fingerprint=s.fingerprint, frozen=frozen(s.model),
        runtime=s.runtime.resolved(), versions={"engine": __version__, "torch": str(torch.__version__)},
        ema=s.ema.state_dict() if s.ema is not None else None, ema_updates=s.ema.updates if s.ema is not None else 0,
        lookahead=s.lookahead.state_dict() if s.lookahead is not None else None,
    )


def save_partial(s: Session, epoch, step, loss_sum, correct):
    """A mid-epoch last.pt (--save-every): `step` steps of epoch `epoch` (0-based) done."""
    state = checkpoint_state(s, epoch, step, {"loss_sum": loss_sum.detach().cpu(), "correct": correct.detach().cpu()})
    with s.run.saving():
        save(state, s.run.path / "last.pt")
    s.clock.saved()


def save_epoch(s: Session, m, best_now, state=None, announce=None):
    """last.pt (and best.pt if `best_now`), metrics.jsonl, curves.png and TensorBoard for the epoch `m`
    (`state`: the checkpoint, if not the one after epoch m["epoch"]). `announce()` (the epoch's line)
    runs once last.pt is committed, before a Ctrl-C held during the writes is let through, so a
    saved epoch is always said."""
    state = state or checkpoint_state(s, m["epoch"])  # every rank: it gathers their RNG states
    if not s.ranks.is_main:
        if announce:
            announce()
        return
    left = None  # the reader of the epoch's line left the pipe (| head): the epoch's files are still written whole
    with interrupts_held(), s.run.saving():  # an epoch's files are written whole, or not at all
        save(state, s.run.path / "last.pt")  # the commit record: resume repairs the rest from it
        if announce:
            try:
                announce()
            except BrokenPipeError as error:
                left = error
        pause_point("commit")
        if best_now:
            save(state, s.run.path / "best.pt")
        s.run.write_metrics(s.metrics)
        s.run.plot(s.metrics)
        if s.tensorboard:
            s.tensorboard.log(m)
    s.clock.saved()
    if left is not None:
        raise left


def write_confusion(s: Session):
    """confusion.png and confusion.json beside curves.png: the test set's confusion matrix of the
    model as the run leaves it, counted during its last evaluation (a resumed run with nothing left
    to train evaluates once more). Every rank takes part (the matrix is summed over them); rank 0
    writes."""
    if not s.metrics:
        return
    confusion = s.confusion
    if confusion is None:
        s.ranks.sync_buffers(s.evaluated)  # as evaluate_epoch: rank 0's BatchNorm statistics
        confusion = Confusion(s.spec.classes, s.runtime.device)
        evaluate(s.evaluated, s.test_loader, s.runtime, tta_level(s.cfg, s.spec), confusion)
    if not s.ranks.is_main:
        return
    confusion = confusion.cpu()
    with interrupts_held(), s.run.saving():
        s.run.write_text("confusion.json", json.dumps(confusion.to_dict()) + "\n")
        confusion.save_png(s.run.path / "confusion.png",
                           f"{s.ref.name} on {dataset_label(s.cfg.data)} after epoch {s.metrics[-1]['epoch']}", s.log)
