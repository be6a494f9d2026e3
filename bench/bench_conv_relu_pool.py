"""The fused conv->ReLU->pool kernel beside eager and torch.compile, on CUDA.

Run: `python -m pytest bench/bench_conv_relu_pool.py` (every case skips without a GPU). One table,
one row per (cifar_cnn layer at batch 256, dtype, implementation):

- eager:   engine.models.conv_relu_pool_eager, the engine's own eager path (conv2d, max_pool2d, relu)
- compile: the same function under torch.compile
- triton:  kernels.conv_relu_pool.conv_relu_pool, the fused kernel

A timed call runs the op REPEAT times and then synchronises the device, so the table's times are
for REPEAT ops; extra_info has per-op microseconds, GB/s and TFLOP/s. GB/s counts the compulsory
bytes (`traffic(...).fused_bytes`: x, weight and bias read once, the pooled output written once)
for every implementation, so that column compares speed rather than each path's own traffic
(`unfused_bytes` is recorded too). TFLOP/s counts the conv outputs the pool keeps (`traffic(...).flops`).
torch.compile and Triton's autotuning run in the warm-up, and every case checks its output
against the fp32 reference after timing.
"""

import pytest
import torch

from kernels.aot import seed_layers
from tests.conftest import requires_triton

pytestmark = [pytest.mark.cuda, requires_triton]
DEVICE = "cuda"
REPEAT = 10
LAYERS = [layer for layer in seed_layers(256) if layer.name.startswith("cifar_cnn")]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOLERANCE = {  # against the fp32 reference on the same values
    "fp32": dict(rtol=1e-2, atol=1e-2),  # cuDNN and the kernel both use TF32 unless it is disabled
    "fp16": dict(rtol=5e-3, atol=5e-3),  # output rounded to fp16 (2**-10 relative), accumulation order
    "bf16": dict(rtol=3e-2, atol=3e-2),  # output rounded to bf16 (2**-7 relative)
}


def implementation(name):
    from engine.models import conv_relu_pool_eager
    from kernels.conv_relu_pool import conv_relu_pool

    return {"eager": conv_relu_pool_eager, "compile": torch.compile(conv_relu_pool_eager),
            "triton": conv_relu_pool}[name]


@pytest.mark.parametrize("impl", ["eager", "compile", "triton"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: layer.name)
def test_conv_relu_pool(benchmark, layer, dtype, impl):
    from kernels.conv_relu_pool import conv_relu_pool_reference
    from kernels.traffic import traffic

    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(layer.x_shape, device=DEVICE, generator=g).to(DTYPES[dtype])  # (N, C, H, W)
    fan_in = layer.w_shape[1] * layer.w_shape[2] * layer.w_shape[3]
    weight = (torch.randn(layer.w_shape, device=DEVICE, generator=g) / fan_in**0.5).to(DTYPES[dtype])
    bias = (torch.randn(layer.w_shape[0], device=DEVICE, generator=g) * 0.5).to(DTYPES[dtype])
    op = implementation(impl)

    def run():
        for _ in range(REPEAT):
            out = op(x, weight, bias, 1, layer.padding)
        torch.cuda.synchronize()
        return out

    with torch.no_grad():
        for _ in range(3):  # torch.compile, autotuning, cuDNN's algorithm search
            run()
        out = benchmark.pedantic(run, rounds=20, warmup_rounds=2)

    seconds = benchmark.stats.stats.median / REPEAT
    model = traffic(layer.x_shape, layer.w_shape, 1, layer.padding, element_size=x.element_size())
    benchmark.extra_info.update(
        layer=layer.name, dtype=dtype, impl=impl, gpu=torch.cuda.get_device_name(), us_per_op=round(seconds * 1e6, 2),
        gbps=round(model.fused_bytes / seconds / 1e9, 1), tflops=round(model.flops / seconds / 1e12, 2),
        fused_bytes=model.fused_bytes, unfused_bytes=model.unfused_bytes,
    )
    want = conv_relu_pool_reference(x.float(), weight.float(), bias.float(), 1, layer.padding)
    assert out.dtype == x.dtype
    torch.testing.assert_close(out.float(), want, **TOLERANCE[dtype])
