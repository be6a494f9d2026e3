"""The fused conv->ReLU->pool kernel against its eager specification.

Without a GPU every case runs in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET),
so shapes stay small; the grid is seeded and randomised rather than exhaustive.
"""

import copy
import random
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from engine.models import ConvReluPool, build_model
from tests.conftest import HAS_CUDA, requires_triton

pytestmark = requires_triton
DEVICE = "cuda" if HAS_CUDA else "cpu"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TOLERANCE = {
    # the same fp32 products summed in another order (on a GPU both sides use TF32 unless disabled)
    torch.float32: dict(rtol=1e-2, atol=1e-2) if HAS_CUDA and torch.backends.cudnn.conv.fp32_precision == "tf32"
    else dict(rtol=1e-4, atol=1e-5),
    # both sides round an fp32 sum to fp16 once (ulp 2**-10 relative): allow about two ulp
    torch.float16: dict(rtol=2e-3, atol=1e-3),
    # the same with bf16's 2**-7 relative ulp
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
}


@pytest.fixture(scope="module")
def crp():
    import kernels.conv_relu_pool as module  # imports triton: only once the skip marks have passed

    return module


def make_inputs(n, c, h, w, oc, kh, kw, dtype, channels_last=False, bias=True, seed=0, weight_channels_last=False):
    """x ~ N(0, 1), weight scaled like nn.Conv2d's init, so conv outputs are O(1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    weight = torch.randn(oc, c, kh, kw, generator=g) / (c * kh * kw) ** 0.5
    b = torch.randn(oc, generator=g) * 0.5 if bias else None
    x, weight = x.to(DEVICE, dtype), weight.to(DEVICE, dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    if weight_channels_last:  # what model.to(memory_format=torch.channels_last) does to conv weights
        weight = weight.to(memory_format=torch.channels_last)
    return x, weight, None if b is None else b.to(DEVICE, dtype)


def random_case(i):
    """Case i of the forward grid: kernel sizes cycle 1..7, dtypes, layouts and channel counts
    (1, 3, the flat path's largest, the tap path) cycle with coprime periods; the rest is random."""
    rng = random.Random(1000 + i)
    k = 1 + i % 7
    kh, kw = (k, k) if rng.random() < 0.75 else (k, rng.randint(1, 7))
    stride = 2 if i % 4 == 3 else 1
    ph, pw = rng.randint(0, 3), rng.randint(0, 3)
    h0, w0 = max(1, kh + stride - 2 * ph), max(1, kw + stride - 2 * pw)  # smallest input with a 2x2 conv output
    return dict(n=rng.randint(1, 3), c=(1, 3, 15, 8, 32)[i % 5], h=rng.randint(h0, h0 + 11),
                w=rng.randint(w0, w0 + 11), oc=rng.choice([1, 5, 16, 33, 64]), kh=kh, kw=kw,
                stride=stride, padding=(ph, pw), dtype=DTYPES[i % 3], channels_last=i % 2 == 1,
                weight_channels_last=i % 4 == 1, bias=i % 6 != 5)


def case_id(case):
    layout = "_cl_wcl" if case["weight_channels_last"] else "_cl" if case["channels_last"] else ""
    return ("n{n}c{c}_{h}x{w}_oc{oc}_k{kh}x{kw}_s{stride}_p{padding[0]}{padding[1]}_{dt}{layout}{nb}".format(
        **case, dt=str(case["dtype"])[6:], layout=layout, nb="" if case["bias"] else "_nobias"))


FORWARD_CASES = [random_case(i) for i in range(30)]


@pytest.mark.slow
@pytest.mark.parametrize("case", FORWARD_CASES, ids=case_id)
def test_forward_matches_reference(crp, case):
    x, weight, bias = make_inputs(case["n"], case["c"], case["h"], case["w"], case["oc"], case["kh"], case["kw"],
                                  case["dtype"], case["channels_last"], case["bias"], seed=case["n"] + case["c"],
                                  weight_channels_last=case["weight_channels_last"])
    out = crp.conv_relu_pool(x, weight, bias, case["stride"], case["padding"])
    ref = crp.conv_relu_pool_reference(x, weight, bias, case["stride"], case["padding"])
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, **TOLERANCE[case["dtype"]])


@pytest.mark.slow
@pytest.mark.parametrize("path", ["flat_k", "by_tap"])
def test_every_autotune_config_is_correct(crp, path):
    """Each config's tile edges fall inside these odd shapes, so every mask is exercised. The
    dtype cycles with the config (shifted between the paths), so every config runs in two of
    fp32/fp16/bf16 and every dtype on both paths, for the cost of one dtype per config."""
    c, channels_last = (3, True) if path == "flat_k" else (20, False)
    shift = 0 if path == "flat_k" else 1
    # 2 images: 60 pooled rows, so 32-row tiles end in a partial tile and 64/128-row tiles are partial
    inputs = {dtype: make_inputs(2, c, 13, 11, 37, 3, 3, dtype, channels_last) for dtype in DTYPES}
    refs = {dtype: crp.conv_relu_pool_reference(*inputs[dtype], 1, 1) for dtype in DTYPES}
    for i, config in enumerate(crp.CONFIGS):
        dtype = DTYPES[(i + shift) % len(DTYPES)]
        out, _ = crp.conv_relu_pool_forward(*inputs[dtype], 1, 1, config=config)
        torch.testing.assert_close(out, refs[dtype], **TOLERANCE[dtype], msg=lambda m: f"{config} {dtype}: {m}")


@pytest.mark.slow
def test_a_sweep_of_shapes_outside_the_grid(crp):
    """24 seeded random cases with channel counts the grid never uses (2, 5, 16, 17, 33), all three
    dtypes, both layouts, strides 1 and 2; every third case, when fp32 with a bias, also checks the gradients."""
    rng = random.Random(12345)
    checked = 0
    for i in range(24):
        k, pad, stride = rng.randint(1, 7), rng.randint(0, 3), rng.choice([1, 1, 2])
        c, oc = rng.choice([2, 5, 16, 17, 33]), rng.choice([3, 8, 19, 40, 65])
        low = max(1, k - 2 * pad + 2 * stride)
        h, w = rng.randint(low, 17), rng.randint(low, 17)
        dtype, channels_last = DTYPES[i % 3], rng.random() < 0.5
        inputs = make_inputs(rng.randint(1, 4), c, h, w, oc, k, k, dtype, channels_last, bias=rng.random() < 0.8, seed=i)
        ref = crp.conv_relu_pool_reference(*inputs, stride, pad)
        torch.testing.assert_close(crp.conv_relu_pool(*inputs, stride, pad), ref, **TOLERANCE[dtype],
                                   msg=lambda m: f"case {i}: {m}")
        if dtype == torch.float32 and i % 3 == 0 and inputs[2] is not None:
            grad_out = torch.randn_like(ref)
            got = _grads(lambda *t: crp.conv_relu_pool(*t, stride, pad), inputs, grad_out)
            want = _grads(lambda *t: crp.conv_relu_pool_reference(*t, stride, pad), inputs, grad_out)
            for g, r in zip(got, want):
                torch.testing.assert_close(g, r, **TOLERANCE[torch.float32], msg=lambda m: f"case {i} grad: {m}")
        checked += 1
    assert checked == 24


BACKWARD_CASES = [  # (n, c, h, w, oc, k, stride, padding, channels_last)
    (2, 3, 11, 10, 16, 3, 1, 0, False),
    (2, 1, 9, 9, 8, 5, 1, 2, True),
    (1, 20, 8, 7, 33, 3, 1, 1, False),
    (2, 17, 9, 8, 16, 3, 2, 1, True),
    (1, 4, 12, 13, 5, 7, 1, 3, False),
]


def _grads(fn, inputs, grad_out):
    inputs = [t.detach().requires_grad_() for t in inputs]
    return torch.autograd.grad(fn(*inputs), inputs, grad_out)


@pytest.mark.slow
@pytest.mark.parametrize("case", BACKWARD_CASES, ids=lambda c: "n{}c{}_{}x{}_oc{}_k{}_s{}_p{}{}".format(
    *c[:-1], "_cl" if c[-1] else ""))
def test_backward_matches_reference_fp32(crp, case):
    n, c, h, w, oc, k, stride, padding, channels_last = case
    inputs = make_inputs(n, c, h, w, oc, k, k, torch.float32, channels_last)
    grad_out = torch.randn_like(crp.conv_relu_pool_reference(*inputs, stride, padding))
    got = _grads(lambda *t: crp.conv_relu_pool(*t, stride, padding), inputs, grad_out)
    want = _grads(lambda *t: crp.conv_relu_pool_reference(*t, stride, padding), inputs, grad_out)
    for name, g, r in zip(("x", "weight", "bias"), got, want):
        torch.testing.assert_close(g, r, **TOLERANCE[torch.float32], msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_backward_half_matches_fp32_gradient(crp, dtype):
    """Half-precision grads against the fp32 gradient of the same values: eager half backward
    routes a window's gradient by its rounded values, so near-ties go to a different pixel than
    the kernel's (exact fp32) choice; against fp32 only the rounding of the result remains."""
    for n, c, h, w, oc, k, stride, padding, channels_last in BACKWARD_CASES[:3]:
        inputs = make_inputs(n, c, h, w, oc, k, k, dtype, channels_last)
        grad_out = torch.randn_like(crp.conv_relu_pool_reference(*inputs, stride, padding))
        got = _grads(lambda *t: crp.conv_relu_pool(*t, stride, padding), inputs, grad_out)
        want = _grads(lambda *t: crp.conv_relu_pool_reference(*t, stride, padding),
                      [t.float() for t in inputs], grad_out.float())
        for name, g, r in zip(("x", "weight", "bias"), got, want):
            assert g.dtype == dtype
            scale = r.abs().max().item()  # relative to the largest gradient: values near 0 round coarsely
            torch.testing.assert_close(g.float() / scale, r / scale, **TOLERANCE[dtype],
                                       msg=lambda m: f"grad of {name}: {m}")


def _fused(model):
    fused = copy.deepcopy(model)
    from kernels.conv_relu_pool import conv_relu_pool

    for block in fused.modules():
        if isinstance(block, ConvReluPool):
            block.op = conv_relu_pool
    return fused


@pytest.mark.slow
@pytest.mark.parametrize("name,shape", [("cifar_cnn", (3, 32, 32)), ("cifar_seq", (3, 32, 32)),
                                        ("mnist_cnn", (1, 28, 28))])
def test_model_logits_match_eager(crp, name, shape):
    torch.manual_seed(0)
    model = build_model(name, shape, 10).to(DEVICE).eval()
    x = torch.randn(2, *shape, device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(_fused(model)(x), model(x), **TOLERANCE[torch.float32])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar_cnn", "cifar_seq"])
def test_sgd_step_matches_eager(crp, name):
    """Same init, same batch, one SGD step each way: the updated weights agree."""
    torch.manual_seed(0)
    eager = build_model(name, (3, 32, 32), 10).to(DEVICE)
    fused = _fused(eager)
    x, y = torch.randn(4, 3, 32, 32, device=DEVICE), torch.randint(0, 10, (4,), device=DEVICE)
    for model in (eager, fused):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for (pname, p_eager), p_fused in zip(eager.named_parameters(), fused.parameters()):
        torch.testing.assert_close(p_fused, p_eager, **TOLERANCE[torch.float32], msg=lambda m: f"{pname}: {m}")


@pytest.mark.slow
def test_autocast_casts_like_conv2d(crp):
    """Under autocast the block's inputs go to the autocast dtype as conv2d's would; logits and
    every fp32 parameter gradient match the eager model under the same autocast."""
    torch.manual_seed(0)
    eager = build_model("cifar_cnn", (3, 32, 32), 10).to(DEVICE)
    fused = _fused(eager)
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    low = torch.bfloat16 if DEVICE == "cpu" else torch.float16
    with torch.autocast(DEVICE, dtype=low):
        want, got = eager(x), fused(x)
        block_out = fused.features[0](x)
    assert block_out.dtype == low and got.dtype == want.dtype
    scale = want.abs().max().item()
    torch.testing.assert_close(got.float() / scale, want.float() / scale, rtol=0, atol=5e-2)
    grad_out = torch.randn_like(want.float())
    (got.float() * grad_out).sum().backward()
    (want.float() * grad_out).sum().backward()
    for (name, p_eager), p_fused in zip(eager.named_parameters(), fused.parameters()):
        assert p_fused.grad.dtype == torch.float32
        # Relative to the gradient's norm: both sides round to the low dtype at every layer, and
        # eager picks each pool window's winner from rounded values, the kernel from fp32 sums,
        # so near-ties route differently: measured up to 0.16 on the conv layers at this batch of
        # two (0.02 on the fc layers); a wrong gradient (routing, mask, cast) is an O(1) error.
        error = ((p_fused.grad - p_eager.grad).norm() / p_eager.grad.norm()).item()
        assert error < 0.35, f"{name}: relative gradient error {error:.3f}"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_strided_view_and_rectangular_stride(crp, dtype):
    """Any strides work, not just the two layouts: a cropped, non-contiguous view of x, with a
    stride that differs by axis and a non-square kernel."""
    x, weight, bias = make_inputs(2, 18, 15, 14, 24, 3, 5, dtype)
    x = x[:, 1:, 2:, :-1]  # (2, 17, 13, 13), strides of the uncropped tensor
    weight = weight[:, 1:]
    out = crp.conv_relu_pool(x, weight, bias, (2, 1), (1, 2))
    torch.testing.assert_close(out, crp.conv_relu_pool_reference(x, weight, bias, (2, 1), (1, 2)), **TOLERANCE[dtype])


def test_nan_propagates_like_eager(crp):
    x, weight, bias = make_inputs(1, 3, 10, 10, 8, 3, 3, torch.float32)
    x[0, 1, 4, 4] = float("nan")
    out, ref = crp.conv_relu_pool(x, weight, bias, 1, 1), crp.conv_relu_pool_reference(x, weight, bias, 1, 1)
    assert out.isnan().sum() > 0
    torch.testing.assert_close(out, ref, equal_nan=True, **TOLERANCE[torch.float32])


def test_empty_batch(crp):
    x, weight, bias = make_inputs(0, 3, 8, 8, 4, 3, 3, torch.float32)
    assert crp.conv_relu_pool(x, weight, bias).shape == (0, 4, 3, 3)


def test_large_batch_is_split_into_launches(crp, monkeypatch):
    """Offsets are int32, so a batch past 2**31 elements is launched in pieces; shrink the limit
    to run that path on a small batch (the kernel and the reference are both real)."""
    x, weight, bias = make_inputs(5, 3, 9, 9, 6, 3, 3, torch.float32, channels_last=True)
    from kernels import envelope

    monkeypatch.setattr(envelope, "INDEX_LIMIT", 2 * x.stride(0) + 10)
    assert envelope.images_per_launch(x) == 2
    torch.testing.assert_close(crp.conv_relu_pool(x, weight, bias), crp.conv_relu_pool_reference(x, weight, bias),
                               **TOLERANCE[torch.float32])
    monkeypatch.setattr(envelope, "INDEX_LIMIT", x.stride(0) - 1)  # not even one image fits: refuse, never wrap
    with pytest.raises(ValueError, match="too large"):
        crp.conv_relu_pool(x, weight, bias)


def _envelope_cases():
    def args(**over):
        x, weight, bias = make_inputs(1, 3, 10, 10, 4, 3, 3, torch.float32)
        base = dict(x=x, weight=weight, bias=bias, stride=1, padding=0, pool=2)
        return {**base, **{k: v(base) if callable(v) else v for k, v in over.items()}}

    return [
        ("kernel 9", lambda: args(weight=lambda b: torch.randn(4, 3, 9, 9, device=DEVICE)), "weight kernel size"),
        ("padding 4", lambda: args(padding=4), "padding"),
        ("padding same", lambda: args(padding="same"), "padding"),
        ("stride 3", lambda: args(stride=3), "stride"),
        ("stride (1, 3)", lambda: args(stride=(1, 3)), "stride"),
        ("pool 3", lambda: args(pool=3), "pool"),
        ("pool (2, 1)", lambda: args(pool=(2, 1)), "pool"),
        ("float64", lambda: args(x=lambda b: b["x"].double(), weight=lambda b: b["weight"].double(),
                                 bias=lambda b: b["bias"].double()), "x.dtype"),
        ("int x", lambda: args(x=lambda b: b["x"].int()), "x.dtype"),
        ("weight dtype", lambda: args(weight=lambda b: b["weight"].half()), "weight.dtype"),
        ("bias dtype", lambda: args(bias=lambda b: b["bias"].half()), "bias.dtype"),
        ("3-D x", lambda: args(x=lambda b: b["x"][0]), "x must be 4-D"),
        ("5-D weight", lambda: args(weight=lambda b: b["weight"][None]), "weight must be 4-D"),
        ("channels", lambda: args(weight=lambda b: b["weight"][:, :2]), "weight has 2 input channels"),
        ("bias shape", lambda: args(bias=lambda b: b["bias"][:3]), "bias must have shape"),
        ("tiny x", lambda: args(x=lambda b: b["x"][:, :, :3, :3]), "too small"),
        ("no channels", lambda: args(x=lambda b: b["x"][:, :0], weight=lambda b: b["weight"][:, :0]), "channels"),
        ("device", lambda: args(weight=lambda b: b["weight"].to("meta")), "weight is on meta"),
        ("not a tensor", lambda: args(x=lambda b: b["x"].tolist()), "x must be a torch.Tensor"),
    ]


@pytest.mark.parametrize("make,match", [c[1:] for c in _envelope_cases()], ids=[c[0] for c in _envelope_cases()])
def test_out_of_envelope_raises_value_error(crp, make, match):
    kwargs = make()
    with pytest.raises(ValueError, match=match):
        crp.conv_relu_pool(**kwargs)


def cifar_cnn_layers(batch):
    """(x shape, weight shape) of cifar_cnn's three stages, walked from the model itself."""
    model = build_model("cifar_cnn", (3, 32, 32), 10)
    shapes, side = [], 32
    for block in model.features:
        shapes.append(((batch, block.conv.in_channels, side, side), tuple(block.conv.weight.shape)))
        side = block.out_size(side)
    return shapes


def test_bytes_moved_model(crp):
    """traffic() against byte counts taken from the engine's own eager path (conv, max-pool with
    its int64 indices, ReLU on the pooled tensor) run on real meta tensors (shapes only), and the
    table the kernel module's docstring quotes."""
    from engine.models import conv_relu_pool_eager
    from kernels.traffic import traffic

    rows, totals, totals_half = [], [0, 0], [0, 0]
    for i, (x_shape, w_shape) in enumerate(cifar_cnn_layers(256), 1):
        x, w, b = (torch.empty(shape, device="meta") for shape in (x_shape, w_shape, w_shape[0]))
        conv = F.conv2d(x, w, b)
        pool, indices = F.max_pool2d(conv, 2, return_indices=True)  # what CUDA max-pool writes
        relu = F.relu(pool)
        assert relu.shape == conv_relu_pool_eager(x, w, b).shape  # the path whose traffic this is
        nbytes = lambda *ts: sum(z.numel() * z.element_size() for z in ts)  # noqa: E731
        t = traffic(x_shape, w_shape, element_size=4)
        assert t.unfused == {"conv": (nbytes(x, w, b), nbytes(conv)), "pool": (nbytes(conv), nbytes(pool, indices)),
                             "relu": (nbytes(pool), nbytes(relu))}
        assert indices.dtype == torch.int64 and nbytes(indices) == 2 * nbytes(pool)
        assert t.fused == {"conv_relu_pool": (nbytes(x, w, b), nbytes(pool))}
        # the saving: conv write + pool read, the indices, and the ReLU's read + write
        assert t.unfused_bytes - t.fused_bytes == 2 * nbytes(conv) + nbytes(indices) + 2 * nbytes(pool)
        assert t.flops == 2 * pool.numel() * 4 * w[0].numel()
        half = traffic(x_shape, w_shape, element_size=2)
        assert 2 * half.fused_bytes == t.fused_bytes
        assert half.unfused_bytes == t.unfused_bytes / 2 + nbytes(indices) / 2  # int64 indices do not shrink
        train = traffic(x_shape, w_shape, element_size=4, training=True)
        assert train.fused_bytes - t.fused_bytes == pool.numel()  # int8 window index
        assert train.unfused_bytes == t.unfused_bytes  # the eager indices are written either way
        rows.append((f"conv{i} {x_shape[1]}->{w_shape[0]}", t.unfused_bytes, t.fused_bytes))
        totals = [totals[0] + t.unfused_bytes, totals[1] + t.fused_bytes]
        totals_half = [totals_half[0] + half.unfused_bytes, totals_half[1] + half.fused_bytes]
    rows += [("all three", *totals), ("all three, half", *totals_half)]
    print("\ncifar_cnn, batch 256: compulsory DRAM bytes per forward, engine eager path vs fused")
    for name, unfused, fused in rows:
        print(f"  {name:<16} eager {unfused / 1e6:7.1f} MB   fused {fused / 1e6:6.1f} MB   {unfused / fused:5.1f}x")
        # the module docstring quotes these numbers; keep it honest
        assert f"{unfused / 1e6:.1f} MB     {fused / 1e6:4.1f} MB   {unfused / fused:4.1f}x" in crp.__doc__


def test_importing_kernels_package_does_not_import_triton():
    code = "import sys, kernels; assert 'triton' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
