"""What one optimizer step costs: --optimizer muon (Muon's orthogonalised step for the conv filters,
engine/muon.py) beside sgd, on fast_cifar94 with its recipe's groups, as `engine train` builds them
on CPU (channels_last). A training step at its batch of 2,000 is about 1.7 s on the 2-core Xeon.

Run: `python -m pytest bench/bench_optim.py`. Each round sets the same gradients and takes one step;
afterwards the case checks that the filters moved (and, for muon, kept their norm sqrt(out channels)).
"""

import pytest
import torch

from engine.config import Config
from engine.models import MODELS
from engine.optim import build_optimizer, set_lr
from engine.recipe import apply_recipe

ROUNDS = 30


@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
def test_optimizer_step(benchmark, optimizer):
    benchmark.group = "optimizer step, fast_cifar94 (its recipe's groups)"
    values = apply_recipe({"model": "fast_cifar94", "optimizer": optimizer}, say=lambda *_: None)
    model = MODELS["fast_cifar94"].build((3, 32, 32), 10).to(memory_format=torch.channels_last)
    step = build_optimizer(Config(**values), model)
    set_lr(step, values["lr"])
    generator = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator).to(memory_format=torch.channels_last) if p.dim() == 4 \
            else torch.randn(p.shape, generator=generator)
    filter_ = next(p for p in model.blocks.parameters() if p.dim() == 4)
    before = filter_.detach().clone()
    benchmark.pedantic(step.step, rounds=ROUNDS, iterations=1, warmup_rounds=3)
    benchmark.extra_info.update(ms=round(benchmark.stats.stats.median * 1e3, 3),
                                parameters=sum(p.numel() for p in model.parameters()))
    assert not torch.equal(before, filter_)
    if optimizer == "muon":
        assert filter_.norm().item() == pytest.approx(len(filter_) ** 0.5, rel=0.5)
