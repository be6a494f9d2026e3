"""Lookahead (--lookahead): airbench94's weight averaging, which pulls the trained weights back.

A slow copy of the model's floating-point state (parameters and BatchNorm statistics) is kept.
Every EVERY optimizer steps the copy moves towards the model, slow += (1 - d) * (model - slow), and
the model is then set to the copy. d grows with the run's progress, d = 0.95^5 * (t / T)^3 after t
of the schedule's T steps: near 0 for most of the run (the copy follows the model and nothing is
pulled), up to 0.77 at the end, where the lr is falling and the weights' noise is what an average
removes. After the schedule's last step the model becomes the copy. So, unlike --ema, the
average is the trained model itself: evaluations, best.pt and the export need nothing of their own.

airbench94 (KellerJordan/cifar10-airbench, `LookaheadState`) ranks it at 0.8 of its 9.9 epochs to
94%. Measured here (fast_cifar94 on the CIFAR-10 JPEG copy, 8 epochs, seed 0, docs/training.md):
90.03% test accuracy, against 89.78% for --ema 0.95, training accuracy 93.9% against 92.4%.

A parameter frozen mid-run (fast_cifar94's whitening bias after epoch 3) is averaged too, as
airbench94's is: the first sync after its freeze sets it to its average, where it then stays. The
update is a function of the global step, so a resumed run (the copy is kept in its checkpoints)
ends bit for bit where an uninterrupted one does; under DDP the weights, and so the copy, agree on
every rank after each step (buffers aside: evaluation takes rank 0's).
"""

import torch

from engine.errors import UsageError

EVERY = 5  # optimizer steps between syncs
PEAK = 0.95**EVERY  # the last sync's decay: 0.95 a step over EVERY steps


def decay_at(done: int, total: int) -> float:
    """The decay of the sync after `done` of the schedule's `total` steps."""
    return PEAK * (min(done, total) / max(total, 1)) ** 3


def check_steps(total: int):
    """A run of fewer than EVERY steps never syncs, and its last step would set the model to the untouched copy:
    its initial weights. One line, before any work."""
    if total < EVERY:
        raise UsageError(f"--lookahead moves the weights to their slow average every {EVERY} steps and ends on it; "
                         f"this run has {total} step{'s' * (total != 1)} in all, so it would end at its initial weights: "
                         f"train for {EVERY} steps or more (more --epochs or a smaller --batch-size), or leave out --lookahead")


def floating(model: torch.nn.Module) -> dict:
    """{name: tensor} of the model's floating-point state: what the copy averages (a BatchNorm's step
    count is an integer and is left alone)."""
    return {name: t for name, t in model.state_dict().items() if t.is_floating_point()}


class Lookahead:
    def __init__(self, model: torch.nn.Module):
        self.slow = {name: t.detach().clone() for name, t in floating(model).items()}

    @torch.no_grad()
    def after_step(self, model: torch.nn.Module, done: int, total: int):
        """After the optimizer's `done`-th step (1-based, global) of `total`: every EVERY steps the copy
        moves towards the model and the model is set to it; after the last step the model is set to
        the copy, which that step moved only if it was also an EVERY-th (airbench94's order)."""
        due = done % EVERY == 0
        if not due and done < total:
            return
        live = floating(model)
        for name, tensor in live.items():  # a buffer the forward first set or gave another shape (a memory of
            held = self.slow.get(name)  # features that grows): nothing of its old shape to average with
            if held is None or held.shape != tensor.shape:
                self.slow[name] = tensor.detach().clone()
        slow = [self.slow[name] for name in live]
        if due:
            torch._foreach_lerp_(slow, list(live.values()), 1 - decay_at(done, total))
        torch._foreach_copy_(list(live.values()), slow)

    def state_dict(self) -> dict:
        """The slow copy, keyed as the model's state dict (checkpoint "model_lookahead")."""
        return self.slow

    def load_state_dict(self, weights: dict):
        missing = sorted(set(self.slow) - set(weights))
        if missing:
            raise KeyError(f"the lookahead copy has no {', '.join(missing[:3])}")
        device = next(iter(self.slow.values())).device if self.slow else torch.device("cpu")
        for name, tensor in weights.items():
            held = self.slow.get(name)
            if held is not None and held.shape == tensor.shape:
                held.copy_(tensor)  # in place: the copy keeps the model's device and memory format
            else:  # a buffer the forward set or reshaped after the model was built (see after_step)
                self.slow[name] = tensor.detach().clone().to(device)
