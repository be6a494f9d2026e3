"""What --ema costs a training step: the engine's `train_step` with and without the weight average,
and the average's update alone, for fast_cifar at batch 128 (its recipe) and cifar_cnn at batch 64;
and what one --lookahead sync costs on fast_cifar94 (airbench94's recipe had it), which comes every 5 steps.

Run: `python -m pytest bench/bench_ema.py`. Each case builds a real engine session on the built-in
synthetic set with the runtime `engine train` picks (its recipe's flags, --amp where it gains) and
times steps on one fixed batch, each followed by a device sync, after warm-up rounds. The update
case checks afterwards that the average moved towards the model.
"""

import pytest
import torch

from engine.config import Config
from engine.recipe import apply_recipe
from engine.session import open_session
from engine.train import train_step

MODELS = {"fast_cifar": 128, "cifar_cnn": 64}  # the batch each trains at by default
ROUNDS = 60
DECAY = 0.99


def session(tmp_path, model, ema):
    values = apply_recipe({"model": model, "batch_size": MODELS[model]}, say=lambda *_: None)
    cfg = Config(**{**values, "epochs": 1, "limit_train": MODELS[model] * 4, "limit_test": MODELS[model], "quiet": True,
                    "out": str(tmp_path / "run"), "ema": DECAY if ema else None})
    s = open_session(cfg, say=lambda *_: None)
    s.model.train()
    return s


@pytest.mark.parametrize("ema", [False, True], ids=["no-ema", f"ema-{DECAY}"])
@pytest.mark.parametrize("model", MODELS)
def test_train_step_with_and_without_ema(benchmark, tmp_path, model, ema):
    benchmark.group = f"train_step with --ema, {model} batch {MODELS[model]}"
    s = session(tmp_path, model, ema)
    x, y, _ = next(s.train_loader.epoch(0))

    def step():
        train_step(s, x, y, 1)
        s.runtime.sync()

    benchmark.pedantic(step, rounds=ROUNDS, iterations=1, warmup_rounds=5)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(images_per_s=round(MODELS[model] / median, 1), ms=round(median * 1e3, 2), model=model,
                                batch=MODELS[model], runtime=s.runtime.describe())
    assert (s.ema is not None) == ema and (not ema or s.ema.updates == ROUNDS + 5)


@pytest.mark.parametrize("model", MODELS)
def test_ema_update_alone(benchmark, tmp_path, model):
    benchmark.group = f"train_step with --ema, {model} batch {MODELS[model]}"
    s = session(tmp_path, model, True)
    x, y, _ = next(s.train_loader.epoch(0))
    train_step(s, x, y, 1)  # one step: the average now copies the model
    with torch.no_grad():
        for p in s.model.parameters():
            p.add_(1.0)  # the model far from the average, so that each update visibly moves it
    before = next(iter(s.ema.module.parameters())).clone()

    def update():
        s.ema.update(s.model)
        s.runtime.sync()

    benchmark.pedantic(update, rounds=ROUNDS, iterations=1, warmup_rounds=5)
    benchmark.extra_info.update(ms=round(benchmark.stats.stats.median * 1e3, 3), model=model,
                                parameters=sum(p.numel() for p in s.model.parameters()))
    after, target = next(iter(s.ema.module.parameters())), next(iter(s.model.parameters()))
    assert (after - target).abs().max() < (before - target).abs().max()  # moved towards the model


def test_lookahead_sync_alone(benchmark):
    """One sync of --lookahead (engine/lookahead.py) on fast_cifar94 as `engine train` prepares it on CPU
    (channels_last): the copy moves towards the model and the model is set to it."""
    from engine.lookahead import EVERY, Lookahead
    from engine.models import MODELS as ZOO

    benchmark.group = "--lookahead sync, fast_cifar94"
    model = ZOO["fast_cifar94"].build((3, 32, 32), 10).to(memory_format=torch.channels_last)
    lookahead = Lookahead(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the model away from its copy, so that each sync moves both
    done = iter(range(EVERY, 10**9, EVERY))
    benchmark.pedantic(lambda: lookahead.after_step(model, next(done), 10**6), rounds=ROUNDS, iterations=1,
                       warmup_rounds=5)
    benchmark.extra_info.update(ms=round(benchmark.stats.stats.median * 1e3, 3),
                                parameters=sum(p.numel() for p in model.parameters()))
    first = next(model.parameters())
    assert torch.equal(first, lookahead.slow[next(iter(model.state_dict()))])  # the model is its copy after a sync
