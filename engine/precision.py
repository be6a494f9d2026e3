"""Whether bf16 autocast pays for this model on this CPU: measured once, cached, said in one line.

`--amp` (and its default) means mixed precision where the hardware gains from it. A CPU with native
bf16 (AVX512-BF16, AMX) gains on convolution-heavy nets (cifar_cnn trains 2.75x faster in bf16 on
a Xeon with AMX), but not on every model: on the same Xeon torchvision's resnet18 trained at 0.92x
and mobilenet_v3_small at 0.53x of fp32 (batch 64, 32x32), so bf16 is kept only where a few timed
training steps say it does not lose. The decision is keyed by the model, its input, the batch, the
memory format, the CPU and the torch version, and cached beside the decode cache; a resumed run
keeps its checkpoint's precision, and under DDP rank 0 decides for every rank.
"""

import copy
import hashlib
import json
import statistics
import time

import torch
import torch.nn.functional as F

from engine.decisions import read, write

# bf16 stays only where it is at least as fast as fp32: a fast path never loses. (0.95 let resnet18
# keep bf16 on a 0.957 measurement that the bench then put at 0.90x; at a true ratio near 1 either
# choice runs at the same speed, so noise deciding it costs nothing.)
KEEP_BF16_FROM = 1.0
BUDGET_S = 0.6  # seconds of timed steps per precision and round (resnet18: 6 steps, not 3)


def decide(model, runtime, ref, x, y, cache_dir):
    """The decision for `model` (on the CPU, not yet prepared) on a real batch x (B, C, H, W), y (B,):
    {"precision": "bf16" or "fp32", "ratio": fp32 time / bf16 time, "cached": bool, "file": the cache}."""
    key = _key(ref, x, runtime)
    cache = cache_dir / "precision.json"
    decisions = read(cache)
    cached = key in decisions
    if not cached:
        ratio = measure(model, runtime, x, y)
        decisions[key] = {"precision": "bf16" if ratio >= KEEP_BF16_FROM else "fp32", "ratio": round(ratio, 3),
                          "model": ref.label, "batch": len(y)}
        write(cache, decisions)
    return dict(decisions[key], cached=cached, file=str(cache))


def apply(decision, runtime, ref, say=print):
    """Set runtime's autocast to the decision's precision, saying so in one line where it is fp32."""
    if decision["precision"] == "fp32" and decision.get("resumed"):
        runtime.amp_dtype = None
        say("Precision: fp32, as the run chose when it started (its checkpoint's precision)")
    elif decision["precision"] == "fp32":
        runtime.amp_dtype = None
        say(f"Precision: fp32, as bf16 autocast trained {ref.name} at {decision['ratio']:.2f}x of fp32's speed on this "
            f"CPU ({'measured earlier' if decision['cached'] else 'measured now'}, cached in {decision['file']}; "
            "--amp-dtype bf16 forces bf16)")


def measure(model, runtime, x, y):
    """fp32 time / bf16 time of a training step's forward and backward on a copy of `model` (its
    statistics and the random state untouched), interleaved over two rounds, medians."""
    probe = copy.deepcopy(model).train().to(runtime.device)
    if runtime.channels_last:
        probe = probe.to(memory_format=torch.channels_last)
    times = {None: [], torch.bfloat16: []}
    with torch.random.fork_rng(devices=[]):
        for _ in range(2):
            for dtype in times:
                times[dtype].append(_step_time(probe, runtime.device, dtype, x, y))
    return statistics.median(times[None]) / statistics.median(times[torch.bfloat16])


def _step_time(model, device, dtype, x, y):
    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up: allocations, oneDNN's kernel choices
        step()
    started = time.perf_counter()
    step()
    once = time.perf_counter() - started
    rounds = max(2, min(20, int(BUDGET_S / max(once, 1e-6))))
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        step()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def _key(ref, x, runtime):
    from engine.runtime import cpu_name

    fields = {"model": ref.label, "args": ref.args, "input": list(x.shape[1:]), "batch": x.shape[0],
              "channels_last": runtime.channels_last, "cpu": cpu_name(), "torch": str(torch.__version__),
              "threads": torch.get_num_threads()}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:24]
