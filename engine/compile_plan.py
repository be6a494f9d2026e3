"""Whether `--compile` pays for the work at hand on this machine: measured once, cached, said in one line.

A compile is an investment: seconds of Inductor's build, paid back only if the compiled graph
runs faster than eager and there is enough work left to recover the build. On the 2-core CPUs
neither held everywhere: Inductor's CPU training graphs ran 0.83-0.97x eager on a Xeon with AMX
and 0.85-0.98x on a Zen 3 (docs/performance.md has the profiles), AOTInductor inference won on
that Xeon and, on the Zen 3, at batch 1 only (1.44x eager; 0.86x at 256), and a 5-second
evaluation paid 20 s of compiling. Nor on a GPU: on an H200 (torch 2.11, .ci/gpu, 2026-12-04)
cifar_cnn's compiled bf16 training step ran 0.73-0.91x eager at batch 64 (1.55x at 4096), and
`engine train --amp --compile` took 23.7 s for 2 epochs where `--amp` took 14.5 s. So every
compile is a decision per (what is compiled, model, input, batch, precision, memory format, CPU,
GPU, torch, threads):

- a measurement is cached in `<cache dir>/compile.json`: the steady-state ratio (eager time /
  compiled time, > 1 is a win) and the seconds the last compile took;
- a compile happens only where the ratio is at least 1 and the work left saves more than the
  compile costs; before anything is measured, only where the work could pay for a compile at the
  largest ratio seen on that kind of device (`MAX_RATIO`) against the slowest first compile seen
  there (`FIRST_COMPILE_S`);
- the compiled code itself is reused across runs: Inductor's on-disk caches (its FX graph and
  AOTAutograd caches, on by default) live under the engine's cache directory, and `engine eval
  --compile` keeps its AOTInductor packages there, keyed like the decode cache.

With the Triton kernel, or ENGINE_COMPILE=always, a run compiles as asked (engine/runtime.py).
"""

import hashlib
import json
import os
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine import cpu, decisions
from engine.errors import first_line
from engine.models.copying import duplicate

# Before any measurement on this machine: what a first compile may cost, the slowest seen (cold
# caches; Xeon: cifar_cnn's training graph 5 s, fast_cifar's 13-17 s, an inference graph 3-6 s, an
# AOTInductor library 8-20 s; Zen 3: cifar_cnn's training graph 38.6 s, so a 5-epoch run there that
# measured it took 1.22x as long as plain training), and the most a compile has gained on these CPUs
# (training: 1.11x fast_cifar fp32; inference: 1.8x bf16 at batch 256). On CUDA, from one H200
# (torch 2.11, 2026-12-04; .ci/gpu's sweep): cifar_cnn's bf16 training graph took 3.5 s to its third
# step (9.6 s with reduce-overhead's CUDA graphs), an inference graph 1.7 s; the most gained, 1.65x in
# training (reduce-overhead, batch 1024) and 4.6x in inference (reduce-overhead, batch 64).
FIRST_COMPILE_S = {"cpu": {"train": 40.0, "eval": 5.0, "aot": 15.0}, "cuda": {"train": 10.0, "eval": 2.0}}
MAX_RATIO = {"cpu": {"train": 1.25, "eval": 1.8, "aot": 1.8}, "cuda": {"train": 1.7, "eval": 4.7}}
WIN_FROM = 1.0  # a compiled graph is used only where it is at least as fast as eager
BUDGET_S = 0.4  # seconds of timed steps per side in a training measurement
# Part of every cache key, raised when what is compiled changes, so an earlier measurement is taken
# again: 2, Inductor's training graphs round low-precision intermediates as eager does (bf16 graphs
# that disagreed with eager before, recorded as ratio 0, may now win); 3, a model with dropout is compared
# with eager on the same masks (every such model disagreed before).
FORMAT = 3


class CompileFailed(Exception):
    """Inductor could not build the graph (no working C++ compiler, an op it cannot lower): run eagerly."""


@dataclass
class Decision:
    compile: bool
    why: str  # one line for the run's log
    measured: dict | None = None  # the cache entry it rests on, if any


def key(kind, ref, shape, runtime, precision=None):
    """The cache key of compiling `kind` ("train", "eval", "aot") for `ref` on batches of `shape`
    (B, C, H, W) with runtime's precision, format and mode, on this CPU (and GPU) and torch."""
    precision = precision or runtime.resolved()["precision"]
    fields = {"format": FORMAT, "kind": kind, **ref.measured_as(), "shape": list(shape), "precision": precision,
              "channels_last": runtime.channels_last, "mode": runtime.compile_mode, "cpu": cpu.name(),
              "torch": str(torch.__version__), "threads": torch.get_num_threads()}
    if runtime.device.type == "cuda":  # CPU keys stay as they were: no field for the GPU there
        fields["gpu"] = torch.cuda.get_device_name(runtime.device)
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:24]


def decide(kind, cache_key, cache_dir, work_s, device="cpu"):
    """Whether to compile `kind` for `work_s` seconds of eager work left on `device` ("cpu" or
    "cuda"). Returns a Decision; where nothing is measured yet and the work could pay, compile (the
    caller then measures and records)."""
    entry = read(cache_dir).get(cache_key)
    if entry is not None:
        ratio, cost = entry["ratio"], entry["compile_s"]
        if ratio == 0:
            return Decision(False, f"Inductor could not compile it here ({entry['failed']}; measured earlier)" if
                            entry.get("failed") else "the compiled graph disagreed with eager here (measured earlier)", entry)
        if ratio < WIN_FROM:
            return Decision(False, f"compiled ran {ratio:.2f}x eager here (measured earlier)", entry)
        saved = work_s * (1 - 1 / ratio)
        if saved <= cost:
            return Decision(False, f"{cost:.0f} s of compiling would save about {saved:.1f} s of {work_s:.0f} s "
                                   f"(compiled {ratio:.2f}x, measured earlier)", entry)
        return Decision(True, f"compiled {ratio:.2f}x eager here (measured earlier)", entry)
    first_compile_s, max_ratio = FIRST_COMPILE_S[device][kind], MAX_RATIO[device][kind]
    best_case = work_s * (1 - 1 / max_ratio)
    if best_case <= first_compile_s:
        work = f"about {work_s:.1f} s" if work_s >= 0.05 else "under 0.1 s"
        return Decision(False, f"{work} of work is too little to pay for a first compile (~{first_compile_s:.0f} s)")
    return Decision(True, "not measured on this machine yet: compiling and measuring")


def record(cache_dir, cache_key, ratio, compile_s, **about):
    """Keep a measurement (ratio = eager time / compiled time; compile_s, the seconds it took)."""
    entries = read(cache_dir)
    entries[cache_key] = {"ratio": round(ratio, 3), "compile_s": round(compile_s, 2), **about}
    write(cache_dir, entries)
    return entries[cache_key]


def eager_seconds(cache_dir, cache_key, measure, **about):
    """The eager time of one step or batch under `cache_key`: cached, else `measure()`d now and kept."""
    entry = read(cache_dir).get(cache_key)
    if entry is not None:
        return entry["seconds"]
    seconds = measure()
    entries = read(cache_dir)
    entries[cache_key] = {"seconds": round(seconds, 6), **about}
    write(cache_dir, entries)
    return seconds


def read(cache_dir):
    """The cached measurements: {key: entry}."""
    return decisions.read(cache_dir / "compile.json")


def write(cache_dir, entries):
    decisions.write(cache_dir / "compile.json", entries)


def keep_compiled_code(cache_dir):
    """Point Inductor's on-disk caches (compiled kernels, FX graphs, AOTAutograd) at the engine's
    cache directory, so a later run of the same graph loads it instead of building it (cifar_cnn's
    training graph: 5 s cold, about 1 s from the cache). A user's own TORCHINDUCTOR_CACHE_DIR wins."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir / "inductor"))


def step_time(model, runtime, x, y, rounds=None):
    """Median seconds of a training step's forward and backward of `model` on x (B, C, H, W), y (B,)
    under runtime's autocast, after two warm-up steps; returns (median, seconds of the first two).
    On CUDA each step ends with a device sync, so a step is timed, not its launch."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)

    def step():
        with runtime.autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)
        sync()

    started = time.perf_counter()
    step()
    step()
    warm = time.perf_counter() - started
    started = time.perf_counter()
    step()
    once = time.perf_counter() - started
    rounds = rounds or max(2, min(20, int(BUDGET_S / max(once, 1e-6))))
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        step()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), warm


def measure_training(model, runtime, x, y):
    """(eager time / compiled time of a training step, seconds the compile took) on copies of
    `model` (its statistics and the random state untouched), with every graph compiled. A compiled
    step whose loss or gradients disagree with eager's on the same weights and batch (beyond the
    precision's rounding) measures 0: a fast path is used only where it is proven against eager.
    (Inductor's bf16 training graph of fast_cifar gave a non-finite loss where eager's was finite, until
    the backend rounded as eager: engine/inductor.py.) The measured copy is compiled with eager's random
    ops (Inductor's `fallback_random`), so that a model with dropout draws the same masks in both."""
    import torch._inductor.config as inductor_config

    from engine.inductor import CountingInductor, quiet_compiler

    quiet_compiler()
    with torch.random.fork_rng(devices=[]):
        eager = duplicate(model, "measuring a compiled step").train()
        compiled = duplicate(model, "measuring a compiled step").train()
        compiled.compile(backend=CountingInductor(runtime.compile_mode))
        started = time.perf_counter()
        try:
            with inductor_config.patch(fallback_random=True):
                agree = agrees(eager, compiled, runtime, x, y)  # the compile happens here
        except Exception as error:  # eager's step ran already (plan_training timed it): the compile failed
            raise CompileFailed(first_line(error)) from error
        compile_s = time.perf_counter() - started
        if not agree:
            return 0.0, compile_s
        eager_s, _ = step_time(eager, runtime, x, y)
        compiled_s, _ = step_time(compiled, runtime, x, y)
        eager_again, _ = step_time(eager, runtime, x, y)  # the machine may have changed pace: bracket it
    eager_s = statistics.median([eager_s, eager_again])
    return eager_s / compiled_s, compile_s


def agrees(eager, compiled, runtime, x, y):
    """Whether one training forward and backward of `compiled` gives eager's loss and gradients on x, y
    (the two modules hold the same weights): within 1e-3 relative in fp32 (1e-2 on CUDA, whose fp32
    convolutions and matmuls run in TF32 here), 5e-2 under bf16/fp16. Each step starts from the same
    random state (the same dropout masks), and the run's is put back after."""
    results = []
    for model in (eager, compiled):
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(0)
            with runtime.autocast():
                loss = F.cross_entropy(model(x), y)
            loss.backward()
        grads = [p.grad.float().flatten() for p in model.parameters() if p.grad is not None]
        results.append((loss.detach().float(), torch.cat(grads) if grads else torch.zeros(1)))
        model.zero_grad(set_to_none=True)
    (loss_a, grad_a), (loss_b, grad_b) = results
    tolerance = 5e-2 if runtime.amp_dtype is not None else 1e-2 if runtime.device.type == "cuda" else 1e-3
    if not (torch.isfinite(loss_b) and torch.isfinite(grad_b).all()):
        return False
    return bool((loss_a - loss_b).abs() <= tolerance * loss_a.abs().clamp_min(1e-6)
                and (grad_a - grad_b).norm() <= tolerance * grad_a.norm().clamp_min(1e-12))


def plan_training(runtime, model, ref, shape, batch, steps, cache_dir, say=print):
    """Whether to compile the training step for a run of `steps` training steps of `model` (not yet
    prepared) on batches of `shape` (B, C, H, W), and say it in one line. `batch()` gives a real
    batch (x, y) when something must be measured: the eager step time, once per key (a fraction of
    a second), cached with the compile measurement; a cached run reads no batch."""
    def measure():
        with torch.random.fork_rng(devices=[]):
            return step_time(_probe_copy(model, runtime), runtime, *batch())[0]

    eager_s = eager_seconds(cache_dir, key("eager_step", ref, shape, runtime), measure, model=ref.label, batch=shape[0])
    train_key = key("train", ref, shape, runtime)
    decision = decide("train", train_key, cache_dir, steps * eager_s, runtime.device.type)
    if decision.compile and decision.measured is None:
        x, y = batch()
        try:
            ratio, compile_s = measure_training(_probe_copy(model, runtime), runtime, x, y)
            failed = {}
        except CompileFailed as error:  # cached like a disagreement, with its reason (delete the file to try again)
            ratio, compile_s, failed = 0.0, 0.0, {"failed": str(error)}
        record(cache_dir, train_key, ratio, compile_s, model=ref.label, batch=len(y), **failed,
               what="training step" if ratio else "training step: compiled disagreed with eager or failed")
        decision = decide("train", train_key, cache_dir, steps * eager_s, runtime.device.type)
        decision.why = decision.why.replace("measured earlier", "measured now")
    say(f"--compile: the training step {'is compiled' if decision.compile else 'runs eagerly'}: {decision.why} "
        f"(cached in {cache_dir / 'compile.json'})")
    return decision


def _probe_copy(model, runtime):
    probe = duplicate(model, "measuring a compiled step").train().to(runtime.device)
    return probe.to(memory_format=torch.channels_last) if runtime.channels_last else probe
