"""What an epoch reports: its raw figures as measured (`EpochFigures`) and the rounded metrics made
of them (`epoch_metrics`), which metrics.jsonl, the printed line and TensorBoard show.

Images per second count steady-state training only: a process's first steps (compile and
allocation warm-up), the steps a resumed checkpoint had already done and the evaluations within an
epoch are kept out of it.
"""

import time
from dataclasses import dataclass

import torch

from engine.evaluate import tta_level
from engine.inductor import compiled_graphs
from engine.optim import lr_at
from engine.runtime import warn
from engine.session import Session


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
    evaluated: bool = True  # False: an epoch end that --eval-every N > 1 does not evaluate
    screened: int = 0  # test images an evaluation within the epoch read before its screen stopped it (0: whole)
    val_loss: float = float("nan")  # with --val-split
    val_acc: float = float("nan")



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
        **({"test_loss": round(f.test_loss, 5), "test_acc": round(f.test_acc, 5)} if f.evaluated else {}),
        "images_per_s": round(steady_images / (f.trained - (f.started if in_warmup else f.steady_from)), 1),
        "epoch_s": round(time.perf_counter() - f.started, 2),
        "warmup_s": round(f.steady_from - f.started, 2) if f.warm_until else 0.0,
        "eval_s": round(f.eval_s, 2),
        "lr": float(f"{lr_at(cfg, f.epoch * steps + done - 1, s.total_steps):.6g}"),  # 0.003125, not ...028
    }
    if f.screened:  # the screen stopped it: its part's accuracy, which no rule reads as the test set's
        m.update(screen_acc=round(f.test_acc, 5), screen_images=f.screened)
    m.update(evaluation_extras(s, f))
    if s.runtime.compile:
        m["compiled_graphs"] = compiled_graphs()
        if not f.first and m["compiled_graphs"] > s.metrics[-1].get("compiled_graphs", 0):
            warn(f"torch.compile built new graphs during epoch {f.epoch + 1}: shapes or modes changed")
    return m


def evaluation_extras(s: Session, f: EpochFigures) -> dict:
    """What --eval-every, --val-split, --tta and --ema add to an evaluation's metrics (nothing without them)."""
    extras = {"step": f.epoch * s.steps + f.steps_done, "partial": True} if f.steps_done else {}
    if not f.evaluated and not f.screened:
        return extras
    if s.val_loader is not None and f.evaluated:
        extras.update(val_loss=round(f.val_loss, 5), val_acc=round(f.val_acc, 5))
    if tta_level(s.cfg, s.spec):
        extras["tta"] = tta_level(s.cfg, s.spec)
    if s.ema is not None:
        extras["ema"] = True  # the figures are the weight average's
    return extras
