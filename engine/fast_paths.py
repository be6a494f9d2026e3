"""The fast paths a training run measures at its start, on this machine, before its first step:
--amp's precision (engine.precision) and whether --compile compiles the training step
(engine.compile_plan). Each decision is cached beside the decode cache and said in one line; under
DDP rank 0 measures and every rank follows it.
"""

import functools

import torch

from engine.checkpoint import Checkpoint
from engine.config import Config
from engine.distributed import Ranks
from engine.loader import BatchLoader
from engine.models.reference import ModelRef
from engine.runtime import Runtime


def first_batch(loader: BatchLoader):
    """(x, y): the first training batch of epoch 0, the batch the measurements run on."""
    batches = loader.epoch(0)
    x, y, _ = next(batches)
    batches.close()  # a streamed split's read-ahead stops here
    return x, y


def copy_problem(model, purpose):
    """Why the measurements cannot copy `model` (engine.models.copying), as one line, or None."""
    from engine.errors import UsageError
    from engine.models.copying import duplicate

    try:
        duplicate(model, purpose)
    except UsageError as error:
        return str(error)
    return None


def choose_precision(cfg: Config, runtime: Runtime, model, ref: ModelRef, resume: Checkpoint | None, ranks: Ranks,
                     loader: BatchLoader, say):
    """--amp where it gains: on a CPU where bf16 autocast was picked because the hardware has it (not
    forced by --amp-dtype bf16), keep it only where it measures no slower for this model
    (engine/precision.py). A resumed run keeps its own precision; under DDP rank 0 decides."""
    if runtime.device.type != "cpu" or runtime.amp_dtype != torch.bfloat16 or cfg.amp_dtype != "auto":
        return
    from engine.precision import apply, decide

    if resume is not None:
        decision = {"precision": resume.runtime.get("precision", "bf16"), "resumed": True}
    else:
        decision = None
        if ranks.is_main:
            problem = copy_problem(model, "the bf16 measurement")
            decision = ({"precision": "fp32", "uncopied": problem} if problem else
                        decide(model, runtime, ref, *first_batch(loader), cfg.resolved_cache_dir()))
        decision = ranks.broadcast(decision)
    apply(decision, runtime, ref, say)


def choose_compile(cfg: Config, runtime: Runtime, model, ref: ModelRef, ranks: Ranks, loader: BatchLoader, say):
    """--compile: whether the training step is compiled, by measurement on this machine (CPU or GPU) against
    the run's length (engine/compile_plan.py); under DDP rank 0 decides for every rank."""
    if not runtime.plans_compile:
        return
    from engine.compile_plan import keep_compiled_code, plan_training

    cache_dir = cfg.resolved_cache_dir()
    keep_compiled_code(cache_dir)
    compile_training = None
    batch = functools.cache(lambda: first_batch(loader))  # read once, and only if something must be measured
    problem = copy_problem(model, "measuring a compiled step") if ranks.is_main else None
    if problem:
        say(f"--compile: the training step runs eagerly, as {problem}")
        compile_training = False
    elif ranks.is_main:
        shape = (cfg.batch_size, *loader.x.shape[1:])
        compile_training = plan_training(runtime, model, ref, shape, batch, len(loader) * cfg.epochs, cache_dir, say).compile
    runtime.compile_training = ranks.broadcast(compile_training)
    runtime.compile_note = f"training {'compiled' if runtime.compile_training else 'eager'}"
