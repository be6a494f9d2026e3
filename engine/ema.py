"""Weight averaging (--ema DECAY): an exponential moving average of a model that knows nothing of it.

`WeightAverage` wraps `torch.optim.swa_utils.AveragedModel`: after each optimizer step every
parameter and buffer moves towards the model's, avg += (1 - d) * (w - avg), in one foreach lerp per
dtype, as `get_ema_multi_avg_fn(DECAY)` does, except that the decay warms up: after n averaged steps
d = min(DECAY, (1 + n) / (10 + n)) (TensorFlow's ExponentialMovingAverage with num_updates). The
average then spans about the last tenth of the steps so far until that reaches DECAY's 1 / (1 - DECAY),
and the first steps' weights, which the plain form keeps at DECAY^n, drop out as fast as the model
leaves them. Measured on fast_cifar, seeds 0-2 (docs/training.md): 57.5-58.8% test accuracy at 0.37
of an epoch, against 56.9% for an average over all steps so far (bias-corrected, Adam's way; decay
0.97) and, for seed 0, 24.9% for the plain form at 0.99.

BatchNorm running statistics are averaged with the weights (use_buffers=True, torchvision's
references' choice): the running mean and variance then describe an average of the recent models,
as the weights do, at no cost beyond the lerp. Copying the live model's statistics would pair the
averaged weights with the last step's statistics, and recomputing them (swa_utils.update_bn) costs
a forward pass over the training set per evaluation.
"""

import torch
from torch.optim.swa_utils import AveragedModel

from engine.models.weights import take_buffer_shapes

WARMUP = 10  # d = min(DECAY, (1 + n) / (WARMUP + n)) after n averaged steps


def warm_decay(decay: float, averaged_steps: int) -> float:
    """The decay of the update that follows `averaged_steps` (1 or more) steps in the average."""
    return min(decay, (1 + averaged_steps) / (WARMUP + averaged_steps))


def lerp_towards(averaged: list, current: list, weight: float):
    """averaged += weight * (current - averaged), tensor by tensor: one foreach lerp for floating
    tensors, the library's EMA formula for integer ones (BatchNorm's num_batches_tracked). A bool
    (a mask) has no average: the library's formula turns any True it ever held into True for good
    (0.9 * True + 0.1 * False copies back as True), so it is the model's own."""
    if torch.is_floating_point(averaged[0]):
        torch._foreach_lerp_(averaged, current, weight)
    elif averaged[0].dtype == torch.bool:
        torch._foreach_copy_(averaged, current)
    else:
        for a, c in zip(averaged, current, strict=True):
            a.copy_(a * (1 - weight) + c * weight)


class WeightAverage:
    """The running average of `model`'s parameters and buffers. Build it from the model before the
    runtime prepares it (device, memory format, reordering, compile) and `prepare` the average the
    same way: it then runs as fast as the model, and owns its compiled forward rather than a deep
    copy of the model's (compiler state that is not the module's to copy)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        from engine.models.copying import duplicate

        copied = duplicate(model, "--ema's average")  # AveragedModel deep-copies it again: a copy deepcopy can make
        self.averaged = AveragedModel(copied, multi_avg_fn=self._average, use_buffers=True)
        self.averaged.module.requires_grad_(False)  # evaluated only: no autograd state on its weights

    @torch.no_grad()
    def _average(self, averaged: list, current: list, _device_count):
        """AveragedModel's multi_avg_fn: `get_ema_multi_avg_fn(decay)` with the decay warmed up by the
        step count, read from the average's own CPU counter (the copy on the device it passes would
        cost a CUDA sync a step)."""
        lerp_towards(averaged, current, 1 - warm_decay(self.decay, self.updates))

    @property
    def module(self) -> torch.nn.Module:
        """The averaged model: what evaluations, best.pt's choice and the exporter use."""
        return self.averaged.module

    @property
    def updates(self) -> int:
        """Optimizer steps averaged so far (the first one is copied, not averaged)."""
        return int(self.averaged.n_averaged)  # a CPU tensor: no device sync

    def prepare(self, prepare, model: torch.nn.Module):
        """Run the average through `prepare` (Runtime.prepare), as the trained `model` was, and
        check that both hold the same parameters and buffers in the same order: update() pairs them
        by position, as AveragedModel does."""
        self.averaged.module = prepare(self.module)
        self.module.requires_grad_(False)
        ours = [n for n, _ in self.module.named_parameters()] + [n for n, _ in self.module.named_buffers()]
        theirs = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
        if ours != theirs:  # a bug, not a user's mistake: the two were prepared differently
            raise RuntimeError(f"--ema: the averaged model's tensors do not pair with the model's ({ours[:3]} ...)")

    @torch.no_grad()
    def update(self, model: torch.nn.Module):
        """Move the average towards `model` (the trained module itself, not its DDP wrapper): after
        each optimizer step. Under DDP the weights are equal on every rank after a step, so a local
        update keeps the average equal too (buffers aside: evaluation takes rank 0's)."""
        self._take_reshaped_buffers(model)
        self.averaged.update_parameters(model)

    def _take_reshaped_buffers(self, model):
        """A buffer the model's forward gave another shape (a memory of features that grows, a
        quantization observer's min/max that starts empty) or first set (registered as None) is
        taken as it is: there is nothing of its old shape to average with."""
        ours = dict(self.module.named_modules())
        for prefix, module in model.named_modules():
            mine = ours.get(prefix)
            if mine is None:
                continue
            for key, theirs in module._buffers.items():
                held = mine._buffers.get(key)
                if theirs is not None and (held is None or held.shape != theirs.shape):
                    mine._buffers[key] = theirs.detach().clone()

    def state_dict(self) -> dict:
        """The averaged weights, with the model's own state-dict keys (checkpoint "model_ema")."""
        return self.module.state_dict()

    def load_state_dict(self, weights: dict, updates: int):
        take_buffer_shapes(self.module, weights)
        self.module.load_state_dict(weights)
        self.averaged.n_averaged.fill_(updates)
