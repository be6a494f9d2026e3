"""Whether bf16 autocast pays for this model on this CPU: measured once, cached, said in one line.

`--amp` (and its default) means mixed precision where the hardware gains from it. A CPU with native
bf16 (AVX512-BF16, AMX) gains on convolution-heavy nets (cifar_cnn trains 2.75x faster in bf16 on
a Xeon with AMX), but not on every model: on the same Xeon torchvision's resnet18 trained at 0.92x
and mobilenet_v3_small at 0.53x of fp32 (batch 64, 32x32), so bf16 is kept only where a few timed
training steps say it does not lose. The decision is keyed by the model, its input, the batch, the
memory format, the CPU and the torch version, and cached beside the decode cache; a resumed run
keeps its checkpoint's precision, and under DDP rank 0 decides for every rank.
"""

import hashlib
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F

from engine import cpu
from engine.decisions import read, write
from engine.models.copying import duplicate

# bf16 stays only where it is at least as fast as fp32: a fast path never loses. (0.95 let resnet18
# keep bf16 on a 0.957 measurement that the bench then put at 0.90x; at a true ratio near 1 either
# choice runs at the same speed, so noise deciding it costs nothing.)
KEEP_BF16_FROM = 1.0
BUDGET_S = 0.6  # seconds of timed steps per precision and round (resnet18: 6 steps, not 3)
# A first round's ratio outside this range decides alone; within it a second round is timed. On a
# 2-core Zen 5 (AVX512-BF16) two full rounds, each with its own warm-up, took 55-71 s of fast_cifar94's
# first start at batch 1,024 (fp32 2.9 s, bf16 1.4 s a step), and this 25-27 s (fast_cifar 3.2 -> 1.7 s,
# cifar_cnn 2.2 -> 1.1 s). The zoo's nets measure 1.3-2.9x there, resnet18 0.92-1.05x, mobilenet_v3_small 0.48x.
CLEAR_FROM = (0.75, 1.4)
# bf16 autocast's loss on the measured batch must be fp32's within this (relative, or absolute below a
# loss of 1), the tolerance the compiled bf16 step is held to (compile_plan.agrees): the zoo's nets and
# torchvision's agree within 1%; a model bf16 breaks is off by far more.
AGREE = 5e-2
FORMAT = 2  # part of the cache key, raised when the measurement changes: 2, the loss agreement (AGREE)


def decide(model, runtime, ref, x, y, cache_dir):
    """The decision for `model` (on the CPU, not yet prepared) on a real batch x (B, C, H, W), y (B,):
    {"precision": "bf16" or "fp32", "ratio": fp32 time / bf16 time, "cached": bool, "file": the cache}."""
    key = _key(ref, x, runtime)
    cache = cache_dir / "precision.json"
    decisions = read(cache)
    cached = key in decisions
    if not cached:
        try:
            ratio, failed = measure(model, runtime, x, y), None
        except BF16Failed as error:  # e.g. a forward that hands its tensors to numpy, which has no bf16
            ratio, failed = 0.0, str(error)
        decisions[key] = {"precision": "bf16" if ratio >= KEEP_BF16_FROM else "fp32", "ratio": round(ratio, 3),
                          "model": ref.label, "batch": len(y), **({"bf16_failed": failed} if failed else {})}
        write(cache, decisions)
    return dict(decisions[key], cached=cached, file=str(cache))


def apply(decision, runtime, ref, say=print):
    """Set runtime's autocast to the decision's precision, saying so in one line where it is fp32."""
    if decision["precision"] == "fp32" and decision.get("resumed"):
        runtime.amp_dtype = None
        say("Precision: fp32, as the run chose when it started (its checkpoint's precision)")
    elif decision.get("uncopied"):
        runtime.amp_dtype = None
        say(f"Precision: fp32, as {decision['uncopied']} (--amp-dtype bf16 forces bf16)")
    elif decision.get("bf16_failed"):
        runtime.amp_dtype = None
        say(f"Precision: fp32, as {ref.name} does not train under bf16 autocast ({decision['bf16_failed']}; "
            f"{'found earlier' if decision['cached'] else 'found now'}, cached in {decision['file']})")
    elif decision["precision"] == "fp32":
        runtime.amp_dtype = None
        say(f"Precision: fp32, as bf16 autocast trained {ref.name} at {decision['ratio']:.2f}x of fp32's speed on this "
            f"CPU ({'measured earlier' if decision['cached'] else 'measured now'}, cached in {decision['file']}; "
            "--amp-dtype bf16 forces bf16)")


def measure(model, runtime, x, y):
    """fp32 time / bf16 time of a training step's forward and backward on a copy of `model` (its
    statistics and the random state untouched): each precision warmed up once, then timed in
    interleaved rounds (medians); a first round outside CLEAR_FROM ends it, a close one gets a second."""
    probe = duplicate(model, "the bf16 measurement").train().to(runtime.device)
    if runtime.channels_last:
        probe = probe.to(memory_format=torch.channels_last)
    steps = {dtype: _step(probe, runtime.device, dtype, x, y) for dtype in (None, torch.bfloat16)}
    times = {dtype: [] for dtype in steps}
    with torch.random.fork_rng(devices=[]):
        losses = {}
        for dtype, step in steps.items():
            for _ in range(2):  # warm-up: allocations, oneDNN's kernel choices
                torch.manual_seed(0)  # the same dropout masks for both precisions' first step
                if dtype is None:
                    losses.setdefault(dtype, step())  # fp32 is the model's own precision: its failure is the run's
                    continue
                try:
                    losses.setdefault(dtype, step())
                except Exception as error:  # noqa: BLE001 - any failure of the user's code under bf16
                    from engine.errors import first_line

                    raise BF16Failed(f"{type(error).__name__}: {first_line(error, 120)}") from None
        check_agrees(losses[None], losses[torch.bfloat16])
        for _ in range(2):
            for dtype, step in steps.items():
                times[dtype].append(_median_time(step))
            ratio = statistics.median(times[None]) / statistics.median(times[torch.bfloat16])
            if not CLEAR_FROM[0] < ratio < CLEAR_FROM[1]:
                break
    return ratio


class BF16Failed(Exception):
    """A model's training step raised under bf16 autocast (and not in fp32), or computed another loss."""


def check_agrees(fp32_loss, bf16_loss):
    """Raise BF16Failed where bf16 autocast's loss on the batch is not fp32's within AGREE (relative):
    a forward whose arithmetic bf16's 8-bit mantissa breaks (a variance as E[x^2] - E[x]^2, a sum of
    many large terms) trains another function, however fast. A non-finite fp32 loss is the run's own."""
    if not math.isfinite(fp32_loss):
        return
    if not math.isfinite(bf16_loss) or abs(bf16_loss - fp32_loss) > AGREE * max(abs(fp32_loss), 1.0):
        raise BF16Failed(f"its loss on the first batch was {bf16_loss:.4g} under bf16 against {fp32_loss:.4g} in fp32")


def _step(model, device, dtype, x, y):
    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss.item()

    return step


def _median_time(step):
    """The median of at least 2 timed steps, as many as fit in BUDGET_S (20 at most)."""
    samples = []
    while len(samples) < 2 or (sum(samples) < BUDGET_S and len(samples) < 20):
        started = time.perf_counter()
        step()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def _key(ref, x, runtime):
    fields = {**ref.measured_as(), "format": FORMAT, "input": list(x.shape[1:]), "batch": x.shape[0],
              "channels_last": runtime.channels_last, "cpu": cpu.name(), "torch": str(torch.__version__),
              "threads": torch.get_num_threads()}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:24]
