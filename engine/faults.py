"""Faults a run stops on or is tested against: a loss that stays non-finite, an evaluation whose loss
is, and the test-only pause hook.

`LossWatch` folds each step's loss into a streak counter on the device and reads it only every
few steps and before a checkpoint, so watching adds no per-step device sync. `pause_point` is a
hook for the kill tests (tests/test_kill.py) and does nothing unless ENGINE_TEST_PAUSE_AT is set.
"""

import math
import os
import signal
import sys

import torch

from engine.errors import EngineError

BAD_STEPS = 3  # consecutive non-finite losses that stop a run
CHECK_EVERY = 16  # steps between host reads of the streak (a device sync on CUDA)


class LossWatch:
    def __init__(self, device, lr, limit=BAD_STEPS, fresh=True):
        """fresh: the run has made no update yet (not a resumed one), so a loss non-finite from its first
        step is its forward's or its data's doing."""
        self.streak = torch.zeros((), dtype=torch.int32, device=device)  # non-finite steps in a row, so far
        self.worst = torch.zeros((), dtype=torch.int32, device=device)  # the longest streak since the last check
        self.from_start = torch.full((), fresh, dtype=torch.bool, device=device)  # every loss so far non-finite
        self.lr, self.limit = lr, limit

    def update(self, loss):
        """Count `loss` (a () tensor on the device) without syncing."""
        bad = ~torch.isfinite(loss)
        self.streak.add_(1).mul_(bad)  # +1 when non-finite, back to 0 when finite
        torch.maximum(self.worst, self.streak, out=self.worst)
        self.from_start.logical_and_(bad)

    def check(self, epoch, step, model=None):
        """Raise when some `limit` steps in a row had a non-finite loss (syncs the device), or, given
        the `model` about to be saved, when the last loss was non-finite and so are its weights."""
        bad_weights = model is not None and int(self.streak.item()) > 0 and not all(
            torch.isfinite(p).all() for p in model.parameters())
        streak = int(self.worst.item()) >= self.limit
        if streak or bad_weights:
            what = (f"for {self.limit} steps in a row (epoch {epoch + 1}, by step {step})" if streak else
                    f"at step {step} of epoch {epoch + 1}, and the weights are no longer finite")
            cause = (f"the learning rate (--lr {self.lr:g}) is probably too high, the data holds bad values, or the "
                     "model's forward makes them")
            if bool(self.from_start.item()):  # non-finite from the first step, before an update could cause it
                cause = ("it was so from the first step, before any update, so the model's forward makes it (a log "
                         "of 0, a division by 0, an overflow) or the data holds bad values, not the learning rate")
            raise EngineError(f"the training loss was NaN or infinite {what}: {cause}; stopped, and nothing after the "
                              "last checkpoint is saved")


def check_outputs(losses, epoch, step, lr):
    """Raise when an evaluation's loss ({"test": loss, "validation": loss}) is NaN or infinite: the model
    about to be saved overflows on those images, though its weights may be finite (a run of fewer
    steps than BAD_STEPS, whose streak could not stop it, or of huge weights). `step`: the step of
    epoch `epoch` (from 0) an evaluation within it came after, 0 at its end."""
    bad = next((name for name, value in losses.items() if not math.isfinite(value)), None)
    if bad:
        at = epoch + 1 if not step else f"{epoch + 1} (step {step})"
        raise EngineError(
            f"the {bad} loss after epoch {at} is {'NaN' if math.isnan(losses[bad]) else 'infinite'}: the model's outputs "
            f"overflow; the learning rate (--lr {lr:g}) is probably too high, the data holds bad values, or the model's "
            "forward makes them; stopped, and nothing after the last checkpoint is saved")


def check_evaluated(loss, what, data):
    """Raise when a finished evaluation's mean loss (`engine eval`'s, of `what` on `data`) is NaN or
    infinite: the model's outputs are on some of the images, and an argmax over NaN is no prediction,
    so neither its accuracy nor its loss means anything."""
    if not math.isfinite(loss):
        raise EngineError(
            f"{what} gives NaN or infinite outputs on images of {data} (its test loss is "
            f"{'NaN' if math.isnan(loss) else 'infinite'}), so its accuracy and loss mean nothing: its weights overflow "
            "on them, or its forward makes them")


_pauses = {}  # stage -> times reached in this process


def pause_point(stage):
    """Test-only: with ENGINE_TEST_PAUSE_AT=STAGE[:N], the N-th time (default 1) this process
    reaches STAGE it prints `ENGINE_TEST_PAUSED STAGE` on stdout and stops itself (SIGSTOP), so a
    test can kill it exactly there (SIGKILL) or let it go on (SIGCONT). Stages: step (after a
    training step and any mid-epoch save), eval (before an epoch's evaluation), save (a checkpoint
    written to its temporary file, not yet renamed), commit (last.pt renamed, best.pt not yet),
    decode (an image folder's chunk handed to the decoding processes)."""
    wanted = os.environ.get("ENGINE_TEST_PAUSE_AT")
    if not wanted:
        return
    name, _, count = wanted.partition(":")
    if name != stage or not (count or "1").isdigit():  # a test setting: a bad count never pauses
        return
    _pauses[stage] = _pauses.get(stage, 0) + 1
    if _pauses[stage] == int(count or 1):
        print(f"ENGINE_TEST_PAUSED {stage}", flush=True)
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGSTOP)
