"""Ahead-of-time compiled inference (torch.export + AOTInductor) for a model whose weights are fixed.

`engine eval CHECKPOINT --compile` on CPU runs this instead of torch.compile. Both run the code
Inductor generates; they differ in what each call costs around it. torch.compile guards, then
goes through AOTAutograd's wrapper and a Python wrapper per graph: about 80 us a call on the
2-core CPUs, more than the compiled code saves on a small batch (cifar_cnn at batch 1 ran 0.97x
eager). AOTInductor compiles the same graph into a shared library called from C++: 1.37x eager
at batch 1 and 1.16x at batch 256 (Xeon, alternated medians). The library holds one input shape
and a copy of the weights.
"""

import hashlib
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from engine.errors import EngineError, first_line, trace_failure
from engine.quiet import quiet_exporter
from engine.inductor import quiet_compiler
from engine.runtime import Runtime


AOT_KIND = "aot-autocast"  # compile_plan's key kind; not "aot", whose bf16 packages held fp32 graphs (Autocast)


class CompiledInference(torch.nn.Module):
    """A model compiled ahead of time for batches of exactly `shape` (B, C, H, W), in eval mode.

    Called like the model; inputs are made `memory_format` first (the library assumes the
    strides it was compiled for). Ambient autocast does not reach inside: the precision was
    fixed when the graph was exported. `eager`: the module it was compiled from, which evaluation
    runs on a batch of another size (the last, engine.evaluate.remainder_logits).
    """

    def __init__(self, runner, shape, memory_format, eager=None):
        super().__init__()
        self.runner, self.shape, self.memory_format, self.eager = runner, tuple(shape), memory_format, eager

    def forward(self, x):
        if tuple(x.shape) != self.shape:
            raise EngineError(f"this model was compiled for batches of shape {list(self.shape)}, got {list(x.shape)}")
        return self.runner(x.contiguous(memory_format=self.memory_format))


class Autocast(torch.nn.Module):
    """`model` under autocast inside its forward, where torch.export records it (as a wrap_with_autocast
    region, which AOTInductor compiles with its casts); an autocast around the export call itself is
    not recorded (torch 2.14: the graph came out fp32, so --compile evaluated a bf16 run in fp32)."""

    def __init__(self, model, device_type, dtype):
        super().__init__()
        self.model, self.device_type, self.dtype = model, device_type, dtype

    def forward(self, x):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(x)


def compile_inference(model, shape, runtime: Runtime, memory_format=torch.channels_last, package_path=None):
    """`model` (on runtime's device, in eval mode from here on) compiled ahead of time for batches
    of `shape` under runtime's autocast; takes seconds (a C++ compile). With `package_path` the
    package is kept there (written whole or not at all), for `load_inference` in a later run."""
    import torch._inductor  # the package's declared API: aoti_compile_and_package, aoti_load_package

    quiet_compiler()
    model.eval()
    example = torch.zeros(shape, device=runtime.device).contiguous(memory_format=memory_format)
    traced = model if runtime.amp_dtype is None else Autocast(model, runtime.device.type, runtime.amp_dtype)
    try:  # quiet: a failed trace logs torch's warnings and dumps its graph twice
        with quiet_exporter(), torch.no_grad():
            program = torch.export.export(traced, (example,))
    except Exception as error:  # a model torch.export cannot trace: say which, in one line
        raise EngineError(f"--compile: torch.export could not trace {type(model).__name__}: "
                          f"{trace_failure(error)}") from error
    with tempfile.TemporaryDirectory(prefix="engine-aoti-") as folder:
        try:  # a C++ build: no compiler, or a full disk, ends here
            options = {k: v for k, v in torch._inductor.list_mode_options(runtime.compile_mode).items()
                       if k != "triton.cudagraphs"}  # --compile-mode; CUDA graphs are torch.compile's alone
            package = torch._inductor.aoti_compile_and_package(program, package_path=os.path.join(folder, "model.pt2"),
                                                               inductor_configs=options)
        except Exception as error:
            raise EngineError(f"--compile: AOTInductor could not build the model ({first_line(error)}); "
                              "evaluate without --compile") from error
        runner = torch._inductor.aoti_load_package(package)  # extracts the library: the package can go
        if package_path is not None:
            try:
                Path(package_path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(package, f"{package_path}.tmp{os.getpid()}")
                os.replace(f"{package_path}.tmp{os.getpid()}", package_path)
            except OSError:  # a cache that cannot be written costs a compile next time, nothing else
                pass
    return CompiledInference(runner, shape, memory_format, model)


def load_inference(package_path, shape, memory_format=torch.channels_last, eager=None):
    """A package `compile_inference` kept, loaded (a fraction of a second); `eager`: the module it holds."""
    import torch._inductor

    return CompiledInference(torch._inductor.aoti_load_package(str(package_path)), shape, memory_format, eager)


def choose_inference(model, loader, runtime: Runtime, ref, source, cache_dir, say=print):
    """What `engine eval --compile` evaluates with on CPU, and the seconds compiling (or loading) took
    (None where it runs eagerly): the model compiled ahead of time where that measured faster on this
    machine and the batches of `loader` repay the compile (engine/compile_plan.py), else `model`.
    The package is kept in the cache, keyed by the compile key, the checkpoint file `source` (path,
    size, modification time) and the model's code (package_file), so evaluating it again loads it
    instead of compiling."""
    from engine.compile_plan import WIN_FROM, decide, eager_seconds, key, read, record

    shape = (loader.batch_size, *loader.x.shape[1:])  # (B, C, H, W): the one eval shape

    def batch():  # the first real batch, read only when something is measured or compiled
        batches = loader.epoch(0)
        x, _, _ = next(batches)
        batches.close()
        return x

    cache_key = key(AOT_KIND, ref, shape, runtime)
    eager_s = eager_seconds(cache_dir, key("eager_infer", ref, shape, runtime),
                            lambda: _batch_time(model, batch(), runtime), model=ref.label, batch=shape[0])
    entries = read(cache_dir)
    package = package_file(cache_dir, cache_key, source, model)
    entry = entries.get(cache_key)
    started = time.perf_counter()
    if package.exists() and entry and entry["ratio"] >= WIN_FROM:
        say(f"--compile: the model compiled ahead of time for this checkpoint earlier ({entry['ratio']:.2f}x eager), from {package}")
        return load_inference(package, shape, loader.memory_format, model), time.perf_counter() - started
    decision = decide("aot", cache_key, cache_dir, eager_s * len(loader))
    say(f"--compile: {'compiling ahead of time (torch.export + AOTInductor)' if decision.compile else 'evaluating eagerly'}: "
        f"{decision.why}")
    if not decision.compile:
        return model, None
    try:
        compiled = compile_inference(model, shape, runtime, loader.memory_format, package_path=package)
    except EngineError as error:  # a forward torch.export cannot trace (control flow on the data), no C++ compiler
        say(f"{error}: evaluating eagerly")
        return model, time.perf_counter() - started
    compile_s = time.perf_counter() - started
    ratio = eager_s / _batch_time(compiled, batch(), runtime)
    record(cache_dir, cache_key, ratio, compile_s, model=ref.label, batch=shape[0], what="inference, AOTInductor")
    if ratio < WIN_FROM:
        package.unlink(missing_ok=True)
        say(f"--compile: the compiled model ran {ratio:.2f}x eager here: evaluating eagerly")
        return model, compile_s
    return compiled, compile_s


def package_file(cache_dir, cache_key, source, model):
    """Where choose_inference keeps the package compiled for the checkpoint file `source` (path, size,
    modification time) and the code `model` runs (neighbours.of_model: its forward's files): a user's
    forward edited since, or another file holding the same class, is compiled again, not served the
    package of the code before (its weights, and so the checkpoint, can stay the same)."""
    from engine.models.neighbours import of_model

    stat = os.stat(source)
    file_key = hashlib.sha256(f"{os.path.realpath(source)}:{stat.st_size}:{stat.st_mtime_ns}:"
                              f"{of_model(model)}".encode()).hexdigest()[:16]
    return Path(cache_dir) / "compiled" / f"{cache_key}-{file_key}.pt2"


def _batch_time(model, x, runtime, rounds=5):
    """Median seconds of `model` on the batch x under no_grad and runtime's autocast, after one warm-up call."""
    samples = []
    with torch.no_grad(), runtime.autocast():
        model(x)
        for _ in range(rounds):
            started = time.perf_counter()
            model(x)
            samples.append(time.perf_counter() - started)
    return statistics.median(samples)
