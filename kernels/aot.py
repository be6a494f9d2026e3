"""Ahead-of-time proof for kernels/conv_relu_pool.py: compile it for real GPUs without one.

    python -m kernels.aot --arch sm_80 sm_90     # everything below, for both architectures
    python -m kernels.aot --arch sm_90 --quick   # two layers, fp16, training variant, selected configs
    python -m kernels.aot --layout nchw channels_last --jobs 2 --details

For every conv->ReLU->pool stage of the seed models (engine.models.MODELS at their reference input
sizes, batch --batch, NCHW unless --layout says otherwise), every dtype (fp32, fp16, bf16), both
variants (inference; training, which also stores the pool's window index) and every autotune
config, `triton.compile` builds
PTX and a cubin for the target; ptxas -v (Triton's own invocation) reports registers per thread
and spill stores/loads, and Triton's metadata gives the shared memory (dynamic, so ptxas cannot
see it). Arguments are specialised exactly as the JIT would specialise the real tensors (ints
equal to 1 become constants, multiples of 16 are marked divisible), from the same
`kernel_arguments` the wrapper launches with, so each binary is the one a GPU run would build.

Which configs a shape selects: autotuning needs a GPU, so `candidate_configs` (the autotuner's
prune rule) decides deterministically which configs a shape may use; on a GPU timing picks one of
them. Exit status 1 if any compile fails, or if any config a seed layer selects spills.

The interpreter replaces @triton.jit functions, so compiling needs TRITON_INTERPRET unset when
triton is first imported: if it is set, `main` re-runs itself in a child process without it
(and leaves this process's environment alone, e.g. under pytest on a CPU machine).
"""

import argparse
import io
import os
import re
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from contextlib import redirect_stdout
from dataclasses import dataclass

ARCHS = {"sm_80": 80, "sm_90": 90}
DTYPES = ("fp32", "fp16", "bf16")
VARIANTS = ("inference", "training")
LAYOUTS = ("nchw", "channels_last")


@dataclass(frozen=True)
class Layer:
    """One conv->ReLU->pool stage of a seed model at a batch size."""

    name: str  # e.g. "cifar_cnn.1"
    x_shape: tuple  # (N, C, H, W)
    w_shape: tuple  # (OC, C, KH, KW)
    padding: int


def seed_layers(batch):
    """Every ConvReluPool stage of the seed models, walked from the models themselves (models
    whose features are not all ConvReluPool blocks, e.g. an MLP, have no stage to compile)."""
    from engine.models import MODELS, ConvReluPool, build_model

    layers = []
    for name, spec in MODELS.items():
        model = build_model(name, spec.reference_shape, 10)
        blocks = list(getattr(model, "features", []))
        if not blocks or not all(isinstance(block, ConvReluPool) for block in blocks):
            continue
        _, h, w = spec.reference_shape
        for i, block in enumerate(blocks):
            conv = block.conv
            x_shape = (batch, conv.in_channels, h, w)
            layers.append(Layer(f"{name}.{i}", x_shape, tuple(conv.weight.shape), conv.padding[0]))
            h, w = block.out_size(h), block.out_size(w)
    return layers


def selected_configs(layer):
    """Indices into CONFIGS that `layer` may run with (the autotuner's prune rule)."""
    from kernels import conv_relu_pool as crp

    n, c, h, w = layer.x_shape
    oc, _, kh, kw = layer.w_shape
    oh, ow = h + 2 * layer.padding - kh + 1, w + 2 * layer.padding - kw + 1
    m = n * (oh // crp.POOL) * (ow // crp.POOL)
    picked = crp.candidate_configs(m, oc, crp.reduction_size(c, kh, kw))
    return [i for i, cfg in enumerate(crp.CONFIGS) if cfg in picked]


def compile_one(job):
    """Compile one (arch, layer, layout, dtype, variant, config): its resource usage, or the error."""
    arch, layer, layout, dtype_name, variant, index = job
    import torch
    import triton
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    from kernels import conv_relu_pool as crp

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    n, c, h, w = layer.x_shape
    oc, _, kh, kw = layer.w_shape
    oh, ow = h + 2 * layer.padding - kh + 1, w + 2 * layer.padding - kw + 1
    meta = lambda *shape, dt=dtype: torch.empty(shape, dtype=dt, device="meta")  # noqa: E731  shapes, no memory
    out = meta(n, oc, oh // crp.POOL, ow // crp.POOL)
    win = meta(*out.shape, dt=torch.int8) if variant == "training" else None
    x, weight = meta(*layer.x_shape), meta(*layer.w_shape)
    if layout == "channels_last":  # x and the weights, as model.to(memory_format=torch.channels_last) leaves them
        cl = lambda t: None if t is None else t.to(memory_format=torch.channels_last)  # noqa: E731
        x, weight, out, win = cl(x), cl(weight), cl(out), cl(win)
    args, constexprs = crp.kernel_arguments(x, weight, meta(oc), out, win, (1, 1), (layer.padding, layer.padding))
    config = crp.CONFIGS[index]
    target = GPUTarget("cuda", ARCHS[arch], 32)
    backend = make_backend(target)
    kernel = crp.conv_relu_pool_kernel
    signature, constants, attrs = {}, {}, {}
    for i, (name, value) in enumerate(zip(kernel.arg_names, args)):  # as JITFunction.run specialises
        kind, spec = native_specialize_impl(backend, value, False, True, True)
        signature[name] = kind
        if kind == "constexpr":
            constants[name] = value
        elif spec:
            attrs[(i,)] = backend.parse_attr(spec)
    for name, value in {**constexprs, **config.kwargs}.items():
        signature[name], constants[name] = "constexpr", value
    triton.knobs.nvidia.dump_ptxas_log = True  # Triton prints ptxas -v's report...
    triton.knobs.compilation.always_compile = True  # ...only when ptxas actually runs
    log = io.StringIO()
    try:
        with redirect_stdout(log):
            compiled = triton.compile(ASTSource(kernel, signature, constants, attrs), target=target,
                                      options={k: v for k, v in config.all_kwargs().items() if k not in config.kwargs})
    except Exception as e:  # noqa: BLE001  any failure is the report
        return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"}
    text = log.getvalue()
    regs = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    if not regs or not spills:
        return {"error": f"no ptxas -v report in: {text[-300:]!r}"}
    return {"regs": int(regs.group(1)), "spill_stores": int(spills.group(1)),
            "spill_loads": int(spills.group(2)), "smem": compiled.metadata.shared}


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m kernels.aot", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", choices=sorted(ARCHS), default=sorted(ARCHS),
                        help="targets (default: both)")
    parser.add_argument("--batch", type=int, default=256, help="batch size of the seed shapes (default 256)")
    parser.add_argument("--quick", action="store_true",
                        help="cifar_cnn's first two stages (flat and by-tap paths), fp16, training, selected configs")
    parser.add_argument("--layout", nargs="+", choices=LAYOUTS, default=["nchw"],
                        help="memory layouts of x (and the weights) to compile for (default: nchw)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel compile processes (default 1)")
    parser.add_argument("--details", action="store_true", help="also print one row per compile")
    return parser.parse_args(argv)


def _jobs(args, layers):
    dtypes, variants = (("fp16",), ("training",)) if args.quick else (DTYPES, VARIANTS)
    from kernels.conv_relu_pool import CONFIGS

    for arch in args.arch:
        for layer in layers:
            indices = selected_configs(layer) if args.quick else range(len(CONFIGS))
            for layout in args.layout:
                for dtype in dtypes:
                    for variant in variants:
                        for index in indices:
                            yield (arch, layer, layout, dtype, variant, index)


def run(argv=None):
    args = _parse(argv)
    from kernels.conv_relu_pool import CONFIGS

    layers = seed_layers(args.batch)
    if args.quick:
        layers = [layer for layer in layers if layer.name in ("cifar_cnn.0", "cifar_cnn.1")]
    selected = {layer.name: selected_configs(layer) for layer in layers}
    jobs = list(_jobs(args, layers))
    print(f"conv_relu_pool_kernel ahead of time: {', '.join(args.arch)}; batch {args.batch}; {len(jobs)} compiles\n")
    print("configs (C#: BLOCK_MxNxK, warps, stages):")
    for i, cfg in enumerate(CONFIGS):
        kw = cfg.kwargs
        tile = f"{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']}"
        print(f"  C{i}  {tile:<10} warps {cfg.num_warps:2d}  stages {cfg.num_stages}  maxnreg {cfg.maxnreg}")
    print("\nseed layers and the configs they select (autotuning on a GPU times only these):")
    for layer in layers:
        print(f"  {layer.name:<12} x {str(layer.x_shape):<18} w {str(layer.w_shape):<16} pad {layer.padding}  "
              f"-> {' '.join(f'C{i}' for i in selected[layer.name])}")

    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(compile_one, jobs))
    else:
        results = [compile_one(job) for job in jobs]

    failures = []
    worst = {}  # (arch, config, dtype, variant) -> worst resources over layers, and who selects it
    for (arch, layer, layout, dtype, variant, index), res in zip(jobs, results):
        chosen = index in selected[layer.name]
        where = f"{arch} {layer.name} {layout} {dtype} {variant} C{index}"
        if "error" in res:
            failures.append(f"{where}: compile failed: {res['error']}")
            continue
        if chosen and res["spill_stores"] + res["spill_loads"]:
            failures.append(f"{where}: selected config spills "
                            f"({res['spill_stores']} B stores, {res['spill_loads']} B loads)")
        if args.details:
            print(f"  {where:<55} {'*' if chosen else ' '} regs {res['regs']:3d} "
                  f"spills {res['spill_stores']}/{res['spill_loads']} smem {res['smem']}")
        row = worst.setdefault((arch, index, dtype, variant), {"regs": 0, "spill_stores": 0, "spill_loads": 0,
                                                                "smem": 0, "selected_by": 0})
        for key in ("regs", "spill_stores", "spill_loads", "smem"):
            row[key] = max(row[key], res[key])
        row["selected_by"] += chosen and layout == args.layout[0]

    for arch in args.arch:
        print(f"\n{arch}: worst case over the seed layers and layouts; 'selected by' counts the layers that "
              "select the config (any spill there fails the run)")
        print(f"  {'config':<7} {'dtype':<5} {'variant':<9} {'regs':>5} {'spill st':>9} {'spill ld':>9} "
              f"{'smem B':>7}  selected by")
        for (a, index, dtype, variant), row in sorted(worst.items()):
            if a == arch:
                print(f"  C{index:<6} {dtype:<5} {variant:<9} {row['regs']:>5} {row['spill_stores']:>9} "
                      f"{row['spill_loads']:>9} {row['smem']:>7}  {row['selected_by'] or '-'}")
    if failures:
        print(f"\nFAILED ({len(failures)}):")
        for line in failures:
            print("  " + line)
        return 1
    print(f"\nOK: {len(jobs)} compiles, no compile failures, no spills in any selected config")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "TRITON_INTERPRET" in os.environ:  # never unset it under a caller that relies on it (pytest)
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        return subprocess.run([sys.executable, "-m", "kernels.aot", *argv], env=env).returncode
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
