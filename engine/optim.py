"""The optimizer and the learning-rate schedule.

The schedule is a pure function of the global step, so its whole state is one integer: a
checkpoint stores it as plain data and a resumed run continues on exactly the same curve.
"""

import math

import torch

from engine.config import Config

WARMUP = 0.2  # onecycle: share of the steps spent rising to the peak


def build_optimizer(cfg: Config, model):
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay)


def lr_at(cfg: Config, step, total_steps):
    """The learning rate for `step` (0-based) of `total_steps`.

    onecycle: linear rise from lr/10 to lr over the first 20% of steps, then linear fall to 0;
    cosine: from lr down to 0 along half a cosine; constant: lr throughout.
    """
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(step / max(total_steps, 1), 1.0)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    if progress < WARMUP:
        return cfg.lr * (0.1 + 0.9 * progress / WARMUP)
    return cfg.lr * (1 - progress) / (1 - WARMUP)


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr
