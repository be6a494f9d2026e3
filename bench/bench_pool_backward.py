"""Issue 18's proposal, measured: fast_cifar's training step compiled by Inductor with its 2x2 max-pools
as Inductor lowers them (a backward that scatters into a zero fill) and written densely (four strided
slices and `torch.maximum`, whose backward is masks: no fill, no scatter), beside eager.

Run: `python -m pytest bench/bench_pool_backward.py`. Each case builds a real engine session on the
built-in synthetic set (fp32, channels_last, batch 128: fast_cifar's recipe) and times the engine's
`train_step` on one fixed batch after warm-up rounds that hold the compile. The dense form replaces
each `F.max_pool2d(x, 2)` of the graph Dynamo hands the backend before Inductor compiles it; it is a
measurement, not an engine path (docs/performance.md: it lost). Each case checks its pools' values and
gradients against eager's and that its steps lowered the loss.
"""

import gc
import math

import pytest
import torch
import torch.nn.functional as F

from engine.config import Config
from engine.session import open_session
from engine.train import train_step

BATCH, ROUNDS = 128, 40
CASES = ("eager", "inductor", "inductor-dense-pool")


def dense_pool2(x):
    """max_pool2d(x, 2) of (B, C, H, W) as pointwise ops on four strided slices (an odd row or column dropped,
    as the pool drops it); autograd's backward is masks of each window's maximum, an even split on ties."""
    h, w = x.shape[2] // 2 * 2, x.shape[3] // 2 * 2
    a, b = x[:, :, 0:h:2, 0:w:2], x[:, :, 0:h:2, 1:w:2]
    c, d = x[:, :, 1:h:2, 0:w:2], x[:, :, 1:h:2, 1:w:2]
    return torch.maximum(torch.maximum(a, b), torch.maximum(c, d))


def pools_of_two(gm):
    """The graph's F.max_pool2d(x, 2) calls (kernel 2, stride 2 or default, nothing else given)."""
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is F.max_pool2d
            and list(n.args[1:]) in ([2], [2, 2], [2, None]) and not n.kwargs]


def inductor(dense):
    import torch._inductor

    def backend(gm, example_inputs):
        if dense:
            for node in pools_of_two(gm):
                node.target, node.args = dense_pool2, node.args[:1]
            gm.recompile()
        return torch._inductor.compile(gm, example_inputs)
    return backend


def test_the_dense_pool_is_max_pool2d():
    x = torch.randn(4, 8, 15, 15).contiguous(memory_format=torch.channels_last).requires_grad_()
    grad = torch.randn(4, 8, 7, 7)
    expected = torch.autograd.grad(F.max_pool2d(x, 2), x, grad)[0]
    out = dense_pool2(x)
    assert torch.equal(out, F.max_pool2d(x, 2))
    assert torch.equal(torch.autograd.grad(out, x, grad)[0], expected)  # no ties in random data


@pytest.mark.parametrize("case", CASES)
def test_fast_cifar_step_by_pool_form(benchmark, tmp_path, case):
    benchmark.group = "train_step, fast_cifar fp32 batch 128, by max-pool form"
    torch.compiler.reset()
    gc.collect()
    cfg = Config(model="fast_cifar", epochs=1, batch_size=BATCH, limit_train=BATCH * 4, limit_test=BATCH, quiet=True,
                 out=str(tmp_path / "run"), amp=False)
    s = open_session(cfg, say=lambda *_: None)
    if case != "eager":
        s.model.compile(backend=inductor(dense=case.endswith("dense-pool")))
    s.model.train()
    x, y, _ = next(s.train_loader.epoch(0))
    first, _ = train_step(s, x, y, 0)
    losses = []

    def step():
        losses.append(train_step(s, x, y, 1)[0])

    benchmark.pedantic(step, rounds=ROUNDS, iterations=1, warmup_rounds=3)
    benchmark.extra_info.update(images_per_s=round(BATCH / benchmark.stats.stats.median, 1), batch=BATCH,
                                model="fast_cifar", runtime=s.runtime.describe())
    last = losses[-1].float().item()
    assert math.isfinite(last) and last < first.float().item()
