"""A library call leaves the caller's process as it found it.

`train()`, `evaluate_checkpoint()`, `evaluate_onnx()` and `export_onnx()` seed torch's generator
with the run's seed, set CUDA's TF32 and cuDNN autotuning for a run, and torch sets
TORCHINDUCTOR_CACHE_DIR when it first compiles; a compiling call quiets torch.utils.cpp_extension's
logger (engine.inductor.quiet_compiler). Inside `kept_global_state()` they do so as
before; on the way out, however the call ends, the caller's generator states, those settings,
that variable and that logger's level are put back. The default dtype is float32 for the duration: the engine's models,
statistics and checks are float32 whatever `torch.set_default_dtype` the caller chose; and
gradients are on, so a caller inside `torch.no_grad()` still trains.

Not restored: the allocator's settings a CPU run makes once (engine.runtime.keep_freed_memory), and
what the caller's own modules were given (train(model=...) copies the module it trains).
"""

import logging
import os
from contextlib import contextmanager

from engine.inductor import QUIETED as QUIETED_LOGGERS  # quiet_compiler's loggers, whose levels a call puts back

INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


@contextmanager
def kept_global_state():
    import torch

    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if cuda else None
    backends = torch.backends
    settings = (backends.cudnn.benchmark, backends.cuda.matmul.fp32_precision, backends.cudnn.conv.fp32_precision)
    environment = os.environ.get(INDUCTOR_CACHE_ENV)
    dtype, grad = torch.get_default_dtype(), torch.is_grad_enabled()
    levels = [logging.getLogger(name).level for name in QUIETED_LOGGERS]
    torch.set_default_dtype(torch.float32)
    torch.set_grad_enabled(True)  # a caller's `with torch.no_grad(): train(...)` would fail its first backward
    try:
        yield
    finally:
        torch.set_grad_enabled(grad)
        for name, level in zip(QUIETED_LOGGERS, levels):
            logging.getLogger(name).setLevel(level)
        torch.set_default_dtype(dtype)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        backends.cudnn.benchmark = settings[0]
        backends.cuda.matmul.fp32_precision, backends.cudnn.conv.fp32_precision = settings[1:]
        if environment is None:
            os.environ.pop(INDUCTOR_CACHE_ENV, None)
        else:
            os.environ[INDUCTOR_CACHE_ENV] = environment
