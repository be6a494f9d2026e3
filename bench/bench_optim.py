"""What one optimizer step costs: --optimizer muon (Muon's orthogonalised step for the conv filters,
engine/muon.py) beside sgd, on fast_cifar94 with its recipe's groups, as `engine train` builds them
on CPU (channels_last): muon with its Newton-Schulz products in float32 (an fp32 run's) and in
bfloat16 (a bf16 run's; skipped where the CPU emulates bf16, as the engine never takes that path
there). A training step at its recipe's batch of 2,000 is about 1.6 s on the 2-core Xeon (0.8 s at 1,000).

Run: `python -m pytest bench/bench_optim.py`. Each round sets the same gradients and takes one step;
afterwards the case checks that the filters moved (and, for muon, kept their norm sqrt(out channels)).
"""

import pytest
import torch

from engine import cpu
from engine.config import Config
from engine.models import MODELS
from engine.optim import build_optimizer, set_lr
from engine.recipe import apply_recipe

ROUNDS = 30


CASES = {"sgd": ("sgd", torch.float32), "muon-fp32": ("muon", torch.float32), "muon-bf16": ("muon", torch.bfloat16)}


@pytest.mark.parametrize("case", CASES)
def test_optimizer_step(benchmark, case):
    optimizer, matmul_dtype = CASES[case]
    if matmul_dtype == torch.bfloat16 and not cpu.has_native_bf16():
        pytest.skip("this CPU has no native bf16: a run here trains, and orthogonalises, in fp32")
    benchmark.group = "optimizer step, fast_cifar94 (its recipe's groups)"
    values = apply_recipe({"model": "fast_cifar94", "optimizer": optimizer}, say=lambda *_: None)
    model = MODELS["fast_cifar94"].build((3, 32, 32), 10).to(memory_format=torch.channels_last)
    step = build_optimizer(Config(**values), model, matmul_dtype)
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
