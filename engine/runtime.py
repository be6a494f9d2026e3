"""The one home of device, autocast, grad scaler, compile, memory format, Triton and sync.

`Runtime.from_config(cfg)` resolves `--device`, `--amp`, `--amp-dtype` against the real
hardware once; training and evaluation then ask it for an autocast context, a scaler and a
prepared model, and `resolved()` says what was chosen. Backend flags are set by
`setup_backends()` when work starts, never at import. What the CPU is lives in engine/cpu.py.
"""

import contextlib
import ctypes
import os
import sys
from dataclasses import dataclass

import torch

from engine import cpu
from engine.config import Config
from engine.errors import EngineError, UsageError, one_line
from engine.inductor import CountingInductor, quiet_compiler


def warn(message):
    print(f"engine: warning: {one_line(message)}", file=sys.stderr)  # a file name's newline escaped


@dataclass
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # None: full fp32
    use_scaler: bool  # fp16 on CUDA needs loss scaling; bf16 does not
    channels_last: bool
    compile: bool
    compile_mode: str
    triton: bool
    # Whether the training graph is compiled (engine/compile_plan.py decides it per model and machine
    # for a run); None: not decided, so on CPU training graphs run eagerly (see CountingInductor)
    compile_training: bool | None = None
    compile_note: str = ""  # what the run's compile decisions were, for describe()

    @classmethod
    def from_config(cls, cfg: Config, warn=warn):
        device = resolve_device(cfg.device)
        amp_dtype = resolve_amp(cfg, device, warn)
        if cfg.compile_mode != "default" and not cfg.compile:  # said, not refused: a run saved so still resumes
            warn(f"--compile-mode {cfg.compile_mode} does nothing without --compile")
        return cls(device, amp_dtype, amp_dtype == torch.float16 and device.type == "cuda",
                   cfg.channels_last, cfg.compile, cfg.compile_mode, cfg.triton)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self):
        return torch.amp.GradScaler(self.device.type, enabled=self.use_scaler)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def resolved(self):
        """What this run actually uses, as plain values (for config.json and checkpoints). On CPU its thread
        count too: torch splits a sum by thread, so a resume with another count is not bit-identical."""
        precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]
        return {"device": self.device.type, "precision": precision, "channels_last": self.channels_last,
                "compile": self.compile, "compile_mode": self.compile_mode if self.compile else None,
                "triton": self.triton, **({"cpu_threads": torch.get_num_threads()} if self.device.type == "cpu" else {})}

    def describe(self):
        amp = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + GradScaler"}[self.amp_dtype]
        parts = [str(self.device), amp, "channels_last" if self.channels_last else "NCHW"]
        if self.compile:
            parts.append(f"torch.compile ({self.compile_note or self.compile_mode + ('; training runs eagerly' if self.eager_training else '')})")
        if self.triton:
            blocks = getattr(self, "fused_blocks", None)  # known once prepare() has fused the model
            count = f" on {blocks} block{'s' if blocks != 1 else ''}" if blocks is not None else ""
            parts.append(f"Triton conv+ReLU+pool{count}" + (" (interpreter)" if self.device.type == "cpu" else ""))
        if getattr(self, "reordered", 0):  # set by prepare() (engine/reorder.py)
            parts.append(f"max-pool before ReLU ({self.reordered}x, exact)")
        return ", ".join(parts)

    def prepare(self, model, compile=None, name=None, shape=None):
        """The model to run: `model` with ReLU -> max-pool pairs swapped (engine/reorder.py; a new
        GraphModule over the same parameters where any were), moved to the device and format, with the
        Triton op swapped in (`shape`, an image's (C, H, W), checks its fusing: use_triton), compiled in
        place (unless `compile` is False: a caller that compiles it another way). Use what it returns."""
        compile = self.compile if compile is None else compile
        if not self.triton:  # (--triton fuses conv -> ReLU -> pool runs itself)
            from engine.reorder import pool_before_relu

            model, self.reordered = pool_before_relu(model)  # exact: ReLU after max-pool, a quarter of the work
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.triton:
            self.fused_blocks = use_triton(model, self.device, compile, name, shape)  # what describe() reports
        if compile:
            # Compiling in place keeps state-dict keys free of the `_orig_mod.` prefix.
            quiet_compiler()
            model.compile(backend=CountingInductor(self.compile_mode, eager_training=self.eager_training, warn=warn))
        return model

    @property
    def ahead_of_time(self):
        """Whether fixed-weight inference (`engine eval --compile`) compiles with AOTInductor
        (engine/inference.py) rather than torch.compile: on CPU, where torch.compile's per-call
        overhead lost to eager at batch 1, except with the Triton kernel (interpreted there)."""
        return self.compile and self.device.type == "cpu" and not self.triton

    @property
    def eager_training(self):
        """Whether compiled training graphs run eagerly: on CPU, unless a measurement chose to compile
        them (`compile_training`, engine/compile_plan.py), since Inductor's training graph lost to eager
        there (see CountingInductor); never with the Triton kernel, which is for correctness there."""
        return self.device.type == "cpu" and not self.triton and not self.compile_training

    @property
    def compiles_training(self):
        """Whether the model a training step calls is torch.compile'd in place: with --compile, except
        where a measurement kept the training step eager (the model is then left as it is)."""
        return self.compile and not (self.plans_compile and not self.compile_training)

    @property
    def plans_compile(self):
        """Whether this run's compiles are decisions by measurement (engine/compile_plan.py): on CPU
        and on CUDA (where cifar_cnn's compiled training step lost to eager at batch 64 on an H200),
        without the Triton kernel, unless ENGINE_COMPILE=always (tests of the compiled path) asks to
        compile whatever the measurement."""
        if os.environ.get("ENGINE_COMPILE", "measured") not in ("measured", "always"):
            raise EngineError(f"ENGINE_COMPILE={os.environ['ENGINE_COMPILE']!r}: set it to measured or always, or unset it")
        return self.compile and not self.triton and os.environ.get("ENGINE_COMPILE") != "always"


def resolve_device(name):
    if name == "cuda" and not torch.cuda.is_available():
        raise EngineError("--device cuda: no CUDA GPU is available; use --device cpu or auto")  # the machine, exit 1
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def resolve_amp(cfg: Config, device, warn=warn):
    """The autocast dtype for --amp/--amp-dtype on this device, or None for fp32."""
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported(including_emulation=False)  # Ampere and newer
        if cfg.amp is False:
            return None
        if cfg.amp_dtype == "bf16" and not bf16_ok:
            raise UsageError("--amp-dtype bf16: this GPU has no bf16; use --amp-dtype fp16 or auto")
        if cfg.amp_dtype == "fp16" or (cfg.amp_dtype == "auto" and not bf16_ok):
            return torch.float16
        return torch.bfloat16
    # CPU autocast is bf16. Without bf16 hardware it is emulated and several times slower (12x on a
    # Zen 3), so --amp keeps fp32 there unless --amp-dtype bf16 insists (with a warning).
    native = cpu.has_native_bf16()
    if cfg.amp is False or (cfg.amp is None and not native and cfg.amp_dtype != "bf16"):
        return None  # an explicit --amp-dtype bf16 asks for bf16 even without --amp
    if cfg.amp_dtype == "fp16":
        raise UsageError("--amp-dtype fp16 is for CUDA; on CPU --amp uses bf16 (--amp-dtype auto or bf16)")
    if not native and cfg.amp_dtype == "auto":  # --amp means "where this hardware gains from it"
        warn("this CPU has no native bf16 (no AVX512-BF16 or AMX), so --amp keeps fp32 "
             "(--amp-dtype bf16 forces emulated bf16, several times slower)")
        return None
    if not native:
        warn("this CPU has no native bf16 (no AVX512-BF16 or AMX): --amp-dtype bf16 will run several times slower than fp32")
    return torch.bfloat16


_warned = []  # the interpreter warning is given once per process
_left_unfused = []  # and each line on runs left unfused (--ema's average is prepared as the model is)


def _swap_ops(model, op, runs):
    """Fuse the model's conv -> ReLU -> 2x2 max-pool `runs` (engine.fusion), then route every
    kernel block (those and the ConvReluPool blocks) through `op`; returns how many blocks."""
    from engine.fusion import fuse, kernel_blocks

    fuse(model, runs=runs)
    blocks = kernel_blocks(model)
    for block in blocks:
        block.op = op
    return len(blocks)


def use_triton(model, device, compile=False, name=None, shape=None):
    """Route every conv -> ReLU -> 2x2 max-pool of `model` through the fused Triton kernel (its
    registered custom op under torch.compile, which Inductor calls inside the compiled graph):
    the ConvReluPool blocks, and the runs inside any nn.Sequential, fused in place with their
    state-dict keys unchanged (engine.fusion). Returns how many blocks run the kernel; a model
    with none is a UsageError naming it (`name`, or its class), before Triton is loaded. Where a
    torch.fx trace cannot tell whether the forward calls a run as one chain, fusing is checked on a
    probe batch of `shape` (an image's (C, H, W)); a run left alone is said in one warning line."""
    from engine.fusion import checked_runs, kernel_blocks

    runs, why = checked_runs(model, shape)
    if not kernel_blocks(model) and not runs:
        raise UsageError(f"--triton: {name or type(model).__name__} has no Conv2d -> ReLU -> MaxPool2d(2) run in an "
                         f"nn.Sequential that the fused kernel can replace{' (' + why + ')' if why else ''}; "
                         "run without --triton")
    if why and why not in _left_unfused:
        _left_unfused.append(why)
        warn(f"--triton: {why}")
    if device.type == "cpu":
        # Triton reads TRITON_INTERPRET when a function is decorated, its own tl.cdiv & co. included,
        # so it must be set before the triton package is first imported (torch.utils.flop_counter,
        # for one, imports it).
        if os.environ.get("TRITON_INTERPRET") != "1":
            if "triton" in sys.modules:
                raise UsageError("--triton on CPU needs Triton's interpreter, but triton was loaded without it; "
                                 "set TRITON_INTERPRET=1")
            os.environ["TRITON_INTERPRET"] = "1"
        if not _warned:
            warn("--triton on CPU runs the kernel in Triton's interpreter: for correctness checks, and very slow")
            _warned.append(True)
    try:
        if compile:
            from kernels.ops import conv_relu_pool
        else:
            from kernels.conv_relu_pool import conv_relu_pool
    except ImportError as error:
        if getattr(error, "name", None) == "triton" or "triton" in str(error):
            raise UsageError("--triton needs the triton package: pip install 'engine-cnn[triton]'") from None
        raise
    return _swap_ops(model, conv_relu_pool, runs)


def keep_freed_memory():
    """Ask glibc's malloc to keep freed blocks of up to 1 GB in the heap instead of unmapping them.

    By default glibc unmaps large freed blocks and raises that threshold only after it sees one
    freed (and never past 32 MB), so whether a process re-faults its activations on every step
    depends on what it happened to allocate first and on the batch size. Page faults and kernel
    zeroing then slow every memory-bound op. On the 2-core CPU: cifar_cnn on the CIFAR JPEG cache
    trained at 1,726 img/s in fp32 before this and 2,608 after (batch 64); at batch 256, whose
    first activation is 59 MB, a 32 MB threshold left inference at 5,805 img/s against 9,208 with
    1 GB, and training 4-14% slower. Returns whether the allocator took the settings (False off glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl or another libc: nothing to tune
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


def setup_backends(device, seed):
    """Process-wide settings for a run, applied when it starts (never at import)."""
    torch.manual_seed(seed)
    if device.type == "cpu":
        keep_freed_memory()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        # TF32 for fp32 matmuls and convolutions, through torch 2.9+'s per-backend precision API
        # (mixing it with the legacy allow_tf32 flags raises)
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
