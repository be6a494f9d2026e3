"""engine.fusion and runtime.use_triton: which conv -> ReLU -> max-pool runs of a user model are
fused, that fusing keeps every state-dict key and Parameter, and that the fused kernel computes
what the eager model does, forward and backward (Triton's interpreter without a GPU, so shapes
stay tiny).
"""

import copy
import os
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.config import Config
from engine.errors import UsageError
from engine.fusion import FusedConvReluPool, eager_ops, find_runs, fuse
from engine.models import ConvReluPool, build_model, conv_relu_pool_eager
from engine.runtime import Runtime, use_triton
from tests.conftest import HAS_CUDA, requires_triton

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
# Errors are ||got - want|| / ||want|| per tensor, against the fp32 eager model: (logits, gradients
# of the input and of each parameter). fp32: the same products summed in another order (~1e-6
# measured; a GPU's TF32 convolutions round to 10 bits). fp16/bf16 models round every layer's
# output to 11 / 8 mantissa bits: the logits move by a few ulp, but a pool window whose top two
# values are that close picks the other pixel in one model and not the other, and one such window
# among this batch's few hundred moves a gradient by ~10% (measured on bf16: eager itself lands
# 0.005-0.16 from fp32, the kernel 0.03-0.12, depending on the seed). A real defect is O(1).
TOLERANCE = {torch.float32: (3e-2, 3e-2) if HAS_CUDA else (1e-4, 1e-4),
             torch.float16: (5e-3, 0.1), torch.bfloat16: (2e-2, 0.3)}


class Net(nn.Module):
    """The tutorials' style, with what the kernel's envelope allows beyond it: a stride-2,
    non-square-kernel conv, pool before ReLU, a bias-free conv, "same" padding, and an
    OrderedDict-named Sequential nested in another. Input (3, 19, 23) -> 10 logits."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (5, 9, 11)
            nn.Conv2d(5, 6, (3, 5), stride=(1, 2), padding=(1, 2), bias=False), nn.MaxPool2d(2), nn.ReLU(inplace=True),
        )  # (6, 4, 3)
        self.head = nn.Sequential(OrderedDict(
            block=nn.Sequential(OrderedDict(conv=nn.Conv2d(6, 7, 3, padding="same"), act=nn.ReLU(),
                                            pool=nn.MaxPool2d(kernel_size=2, stride=2))),  # (7, 2, 1)
            flatten=nn.Flatten(), fc=nn.Linear(7 * 2 * 1, 10)))

    def forward(self, x):
        return self.head(self.features(x))


def _net(seed=0):
    torch.manual_seed(seed)
    return Net().to(DEVICE)


def test_fuse_rewrites_every_run_and_keeps_keys_and_parameters():
    model = _net()
    state = model.state_dict(keep_vars=True)
    assert fuse(model) == 3
    fused = model.state_dict(keep_vars=True)
    assert list(fused) == list(state) and all(fused[k] is state[k] for k in state)  # the same Parameter objects
    kinds = [type(m).__name__ for m in model.features] + [type(m).__name__ for m in model.head.block]
    assert kinds == ["FusedConvReluPool", "Identity", "Identity"] * 3
    assert model.features[3].bias is None and model.features[3].stride == (1, 2)
    assert model.head.block.conv.padding == (1, 1)  # "same" for a 3x3 kernel
    assert fuse(model) == 0 and find_runs(model) == []  # idempotent


def test_a_fused_model_computes_the_same_function_eagerly():
    """Fused with the eager op (pool, then ReLU: engine.models.blocks says why that is exact), the
    model gives the same logits and gradients, so any difference under the kernel is the kernel's."""
    model = _net(1)
    fused = copy.deepcopy(model)
    fuse(fused)
    x = torch.randn(3, 3, 19, 23, device=DEVICE, requires_grad=True)
    y = torch.tensor([0, 4, 9], device=DEVICE)
    grads = []
    for m in (model, fused):
        logits = m(x)
        F.cross_entropy(logits, y).backward()
        grads.append((logits.detach(), x.grad.clone(), [p.grad.clone() for p in m.parameters()]))
        x.grad = None
    (want, want_x, want_p), (got, got_x, got_p) = grads
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)  # fp32: the same ops, ReLU and pool swapped
    torch.testing.assert_close(got_x, want_x, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_p, want_p, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def _seq(*modules):
    return nn.Sequential(*modules)


class _OwnForward(nn.Sequential):
    def forward(self, x):  # skips the ReLU: fusing it would change the function
        return self[2](self[0](x))


class _Conv(nn.Conv2d):  # a subclass may compute something else (weight standardisation, say)
    pass


def _hooked():
    relu = nn.ReLU()
    relu.register_forward_hook(lambda *_: None)
    return _seq(nn.Conv2d(3, 4, 3), relu, nn.MaxPool2d(2))


UNFUSABLE = {
    "grouped": lambda: _seq(nn.Conv2d(4, 4, 3, groups=2), nn.ReLU(), nn.MaxPool2d(2)),
    "dilated": lambda: _seq(nn.Conv2d(3, 4, 3, dilation=2), nn.ReLU(), nn.MaxPool2d(2)),
    "stride 3": lambda: _seq(nn.Conv2d(3, 4, 3, stride=3), nn.ReLU(), nn.MaxPool2d(2)),
    "kernel 9": lambda: _seq(nn.Conv2d(3, 4, 9), nn.ReLU(), nn.MaxPool2d(2)),
    "padding 4": lambda: _seq(nn.Conv2d(3, 4, 3, padding=4), nn.ReLU(), nn.MaxPool2d(2)),
    "same, even kernel": lambda: _seq(nn.Conv2d(3, 4, 4, padding="same"), nn.ReLU(), nn.MaxPool2d(2)),
    "reflect padding": lambda: _seq(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU(), nn.MaxPool2d(2)),
    "3x3 pool": lambda: _seq(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(3)),
    "overlapping pool": lambda: _seq(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2, stride=1)),
    "padded pool": lambda: _seq(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2, padding=1)),
    "ceil-mode pool": lambda: _seq(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)),
    "pool with indices": lambda: _seq(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2, return_indices=True)),
    "average pool": lambda: _seq(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AvgPool2d(2)),
    "leaky ReLU": lambda: _seq(nn.Conv2d(3, 4, 3), nn.LeakyReLU(), nn.MaxPool2d(2)),
    "BatchNorm between": lambda: _seq(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2)),
    "Conv2d subclass": lambda: _seq(_Conv(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2)),
    "Sequential with its own forward": lambda: _OwnForward(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2)),
    "hook on the ReLU": _hooked,
}


@pytest.mark.parametrize("case", list(UNFUSABLE))
def test_runs_outside_the_kernels_envelope_are_left_alone(case):
    model = UNFUSABLE[case]()
    kinds = [type(m) for m in model.modules()]
    assert find_runs(model) == [] and fuse(model) == 0
    assert [type(m) for m in model.modules()] == kinds


def test_eager_ops_puts_each_blocks_op_back():
    model = _seq(ConvReluPool(3, 4, 3), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
    fuse(model)
    sentinel = object()  # no op is run here: only which one is installed is checked
    for block in (model[0], model[1]):
        block.op = sentinel
    with eager_ops(model):
        assert model[0].op is conv_relu_pool_eager and model[1].op is conv_relu_pool_eager
    assert model[0].op is sentinel and model[1].op is sentinel


@pytest.mark.parametrize("name", ["fast_cifar", "mlp"])
def test_triton_on_a_model_with_nothing_to_fuse_is_one_line(name):
    model = build_model(name, (3, 32, 32), 10)
    with pytest.raises(UsageError) as error:
        use_triton(model, DEVICE, name=name)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"--triton: {name} has no Conv2d -> ReLU -> MaxPool2d(2) run")
    assert message.endswith("run without --triton")
    with pytest.raises(UsageError, match="--triton: FastNet has no"):  # without a name: the class
        runtime = Runtime.from_config(Config(device=DEVICE.type, amp=False, triton=True))
        runtime.prepare(build_model("fast_cifar", (3, 32, 32), 10))


def test_triton_on_a_torchvision_resnet_is_one_line():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.get_model("resnet18", weights=None, num_classes=10)  # conv -> BN -> ReLU -> 3x3 pool
    with pytest.raises(UsageError, match="--triton: ResNet has no"):
        use_triton(model, DEVICE)


@requires_triton
def test_prepare_counts_the_blocks_it_routes_through_the_kernel():
    runtime = Runtime.from_config(Config(device=DEVICE.type, amp=False, triton=True), warn=lambda *_: None)
    runtime.prepare(build_model("cifar_cnn", (3, 32, 32), 10))
    assert runtime.fused_blocks == 3 and "Triton conv+ReLU+pool on 3 blocks" in runtime.describe()
    mixed = _seq(ConvReluPool(3, 4, 3), nn.Conv2d(4, 5, 3), nn.ReLU(), nn.MaxPool2d(2))
    assert use_triton(mixed, DEVICE) == 2  # the engine's block and the user's run
    assert all(block.op is not conv_relu_pool_eager for block in (mixed[0], mixed[1]))


@requires_triton
@pytest.mark.slow
def test_triton_on_cpu_after_triton_loaded_without_the_interpreter_is_one_line():
    """Triton decorates its own tl.cdiv & co. when it is imported, so the interpreter cannot be
    chosen afterwards: without the check the first step failed deep inside the kernel."""
    code = ("import torch, triton\n"
            "from engine.errors import UsageError\n"
            "from engine.models import build_model\n"
            "from engine.runtime import use_triton\n"
            "try:\n"
            "    use_triton(build_model('cifar_cnn', (3, 32, 32), 10), torch.device('cpu'))\n"
            "except UsageError as error:\n"
            "    print(error)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == ("--triton on CPU needs Triton's interpreter, but triton was loaded without it; "
                                     "set TRITON_INTERPRET=1"), result.stderr


def _errors(dtype, channels_last, seed):
    """{tensor: error} of the kernel (through use_triton) in `dtype` against the fp32 eager model,
    on a seeded odd-shaped batch of 2."""
    reference = _net(seed)
    fused = copy.deepcopy(reference).to(dtype)
    assert use_triton(fused, DEVICE) == 3 and isinstance(fused.features[0], FusedConvReluPool)
    x = torch.randn(2, 3, 19, 23, generator=torch.Generator().manual_seed(seed)).to(DEVICE)  # (B, C, H, W)
    y = torch.tensor([1, 7], device=DEVICE)
    results = []
    for model, inputs in ((reference, x), (fused, x.to(dtype))):
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
            model = model.to(memory_format=torch.channels_last)
        inputs = inputs.detach().clone().requires_grad_(True)
        logits = model(inputs)
        F.cross_entropy(logits.float(), y).backward()
        results.append({"logits": logits.detach().float(), "input": inputs.grad.float(),
                        **{name: p.grad.float() for name, p in model.named_parameters()}})
    want, got = results
    assert got.keys() == want.keys()
    return {k: ((got[k] - want[k]).norm() / want[k].norm()).item() for k in want}


def _assert_within(errors, dtype):
    logits_tol, grad_tol = TOLERANCE[dtype]
    assert errors["logits"] <= logits_tol, errors
    assert all(error <= grad_tol for error in errors.values()), errors


@requires_triton
def test_kernel_matches_eager_forward_and_backward_fp32():
    _assert_within(_errors(torch.float32, channels_last=False, seed=2), torch.float32)


@requires_triton
@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kernel_matches_eager_channels_last(dtype, seed):
    _assert_within(_errors(dtype, channels_last=True, seed=seed), dtype)
