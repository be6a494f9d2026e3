"""Inference throughput of cifar_cnn: eager PyTorch (NCHW, channels_last), compiled, against onnxruntime fp32 and int8.

Two compiled cases: `compile` is what `engine eval --compile` runs on this machine (on CPU,
AOTInductor: engine/inference.py), `torch-compile` is torch.compile in place, as a training run
evaluates each epoch with --compile.

Run: `python -m pytest bench/bench_inference.py`. One model (random weights, seeded), one batch,
every path in the same run, at batch 1, 64 (engine eval's default) and 256. `extra_info` has
images/s, the share of the fp32 SGEMM roof measured in this run, and at batch 1 the p50/p99 latency. Compile and session
creation stay in warm-up; each case checks afterwards that its logits match eager fp32.
"""

import copy

import numpy as np
import pytest
import torch

from engine.models import build_model, forward_flops
from engine.normalization import Normalized

MODEL, SHAPE, CLASSES = "cifar_cnn", (3, 32, 32), 10
PATHS = ("eager-nchw", "eager-channels-last", "compile", "torch-compile", "onnxruntime-fp32", "onnxruntime-int8")


@pytest.fixture(scope="module")
def model():
    from engine.runtime import keep_freed_memory

    keep_freed_memory()  # the allocator setting of engine processes (at batch 256 eager gains 1.6x from it)
    torch.manual_seed(0)
    return Normalized(build_model(MODEL, SHAPE, CLASSES), [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]).eval()


@pytest.fixture(scope="module")
def onnx_files(model, tmp_path_factory):
    from export.onnx_export import to_onnx
    from export.quantize import quantize

    folder = tmp_path_factory.mktemp("bench-onnx")
    fp32 = folder / "model.onnx"
    to_onnx(model, torch.rand(2, *SHAPE), fp32)
    calibration = np.random.default_rng(1).random((256, *SHAPE), dtype=np.float32)
    return {"onnxruntime-fp32": fp32, "onnxruntime-int8": quantize(fp32, folder / "model.int8.onnx", calibration)}


def runner(path, model, onnx_files, batch):
    """A callable images -> logits (numpy) for `path`, warmed up by the caller."""
    if path.startswith("onnxruntime"):
        from export.session import open_session

        session, _ = open_session(onnx_files[path], device="cpu")
        return lambda x: session.run(None, {"input": x})[0]
    channels_last = path != "eager-nchw"
    module = copy.deepcopy(model).to(memory_format=torch.channels_last) if channels_last else model
    if path == "torch-compile":
        module.compile()
    if path == "compile":  # engine eval --compile on CPU
        from engine.config import Config
        from engine.inference import compile_inference
        from engine.runtime import Runtime

        module = compile_inference(module, (batch, *SHAPE), Runtime.from_config(Config(device="cpu", amp=False, compile=True)))

    def run(x):
        with torch.inference_mode():
            t = torch.from_numpy(x)
            if channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            return module(t).numpy()

    return run


@pytest.mark.parametrize("batch", [1, 64, 256])
@pytest.mark.parametrize("path", PATHS)
def test_inference(benchmark, roof, model, onnx_files, path, batch):
    benchmark.group = f"inference, batch {batch}"
    x = np.random.default_rng(2).random((batch, *SHAPE), dtype=np.float32)
    run = runner(path, model, onnx_files, batch)
    for _ in range(3):  # warm-up: compile, session allocation, kernel selection
        run(x)
    rounds = {1: 2000, 64: 120}.get(batch, 30)  # about 0.5 s or more of calls a case, so a hiccup cannot move the median
    logits = benchmark.pedantic(run, args=(x,), rounds=rounds, iterations=1, warmup_rounds=2)
    times = np.array(benchmark.stats.stats.data)
    images_per_s = batch / np.median(times)
    flops = forward_flops(model.model, SHAPE)
    benchmark.extra_info.update(images_per_s=round(float(images_per_s), 1), batch=batch,
                                gflops=round(images_per_s * flops / 1e9, 2),
                                roof_share=round(images_per_s * flops / 1e9 / roof, 3), roof_gflops=round(roof, 1))
    if batch == 1:
        benchmark.extra_info.update(p50_ms=round(float(np.percentile(times, 50)) * 1e3, 3),
                                    p99_ms=round(float(np.percentile(times, 99)) * 1e3, 3))
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    if path == "onnxruntime-int8":  # the same function up to int8 rounding
        assert np.abs(logits - expected).max() < 0.5
        assert batch == 1 or (logits.argmax(1) == expected.argmax(1)).mean() >= 0.9
    else:
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)
