"""engine.models.summary: the layer table and the FLOPs of any nn.Module (the engine's own nets,
torchvision's, a user's Sequential), counted by FlopCounterMode and checked against hand counts
and torchvision's published figures; measuring leaves the model, its statistics and the RNG alone.
"""

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

from engine.models import (MODELS, build_model, count_parameters, format_summary, forward_flops, summarize,
                           training_flops)

torchvision = pytest.importorskip("torchvision")

CIFAR_CNN_FORWARD = 18_196_992  # by hand in test_forward_flops_count_cifar_cnn_by_hand
CONV1 = 2 * 30 * 30 * 64 * 3 * 3 * 3  # cifar_cnn's first conv, 32 -> 30


def _torchvision(name, classes=10):
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, num_classes=classes)


def test_forward_flops_count_cifar_cnn_by_hand():
    conv2 = 2 * 13 * 13 * 64 * (64 * 3 * 3)  # 15 -> 13, pool -> 6
    conv3 = 2 * 4 * 4 * 128 * (64 * 3 * 3)  # 6 -> 4, pool -> 2
    fc1, fc2 = 2 * 512 * 256, 2 * 256 * 10
    model = build_model("cifar_cnn", (3, 32, 32), 10)
    assert forward_flops(model, (3, 32, 32)) == CONV1 + conv2 + conv3 + fc1 + fc2 == CIFAR_CNN_FORWARD


def test_training_flops_are_three_forwards_less_the_first_layers_input_gradient():
    """Backward costs each conv and linear layer its forward twice (input and weight gradient),
    except that nothing asks for the input image's gradient."""
    model = build_model("cifar_cnn", (3, 32, 32), 10)
    assert training_flops(model, (3, 32, 32)) == 3 * CIFAR_CNN_FORWARD - CONV1 == 51_480_576


def test_forward_flops_count_plain_convs_and_mlp():
    mlp = build_model("mlp", (1, 28, 28), 10)
    assert forward_flops(mlp, (1, 28, 28)) == 2 * (784 * 128 + 128 * 10)
    fast = build_model("fast_cifar", (3, 32, 32), 10)
    stem = 2 * 31 * 31 * 24 * 12
    block1 = 2 * 31 * 31 * 32 * 24 * 9 + 2 * 15 * 15 * 32 * 32 * 9
    block2 = 2 * 15 * 15 * 64 * 32 * 9 + 2 * 7 * 7 * 64 * 64 * 9
    block3 = 2 * 7 * 7 * 128 * 64 * 9 + 2 * 3 * 3 * 128 * 128 * 9
    assert forward_flops(fast, (3, 32, 32)) == stem + block1 + block2 + block3 + 2 * 128 * 10


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small",
                                  pytest.param("efficientnet_b0", marks=pytest.mark.slow)])
def test_forward_flops_match_torchvisions_published_figures(name):
    """torchvision lists each ImageNet model's GFLOPS at 224x224 (multiply-adds, to 3 decimals)."""
    published = torchvision.models.get_model_weights(name).DEFAULT.meta["_ops"]
    assert round(forward_flops(_torchvision(name, 1000), (3, 224, 224)) / 2e9, 3) == published


def test_grouped_conv_weight_gradient_is_counted_once_per_group():
    """torch 2.14's own formula counts a depthwise conv's weight gradient once per channel."""
    model = nn.Sequential(nn.Conv2d(3, 12, 3), nn.Conv2d(12, 12, 3, groups=12), nn.Conv2d(12, 24, 1, groups=3))
    first = 2 * 9 * 11 * 12 * 3 * 9  # (3, 11, 13) -> (12, 9, 11)
    depthwise = 2 * 7 * 9 * 12 * 1 * 9  # -> (12, 7, 9), one input channel per filter
    grouped = 2 * 7 * 9 * 24 * 4 * 1  # -> (24, 7, 9), four input channels per filter
    assert forward_flops(model, (3, 11, 13)) == first + depthwise + grouped
    assert training_flops(model, (3, 11, 13)) == first * 2 + depthwise * 3 + grouped * 3


@pytest.mark.slow
@pytest.mark.parametrize("name, first_conv", [("resnet18", 2 * 16 * 16 * 64 * 3 * 7 * 7),
                                              ("mobilenet_v3_small", 2 * 16 * 16 * 16 * 3 * 3 * 3)])
def test_torchvision_training_flops_are_three_forwards_less_the_stems_input_gradient(name, first_conv):
    """At 32x32, where resnet18's last stage is 1x1 (BatchNorm in train mode then needs two
    images); mobilenet's depthwise convs check the grouped weight gradient."""
    model = _torchvision(name)
    assert training_flops(model, (3, 32, 32)) == 3 * forward_flops(model, (3, 32, 32)) - first_conv


def test_summary_table_of_cifar_cnn():
    model = build_model("cifar_cnn", (3, 32, 32), 10)
    rows = summarize(model, (3, 32, 32))
    assert [r.name for r in rows] == ["features.0", "features.1", "features.2", "fc1", "fc2"]
    assert [r[2] for r in rows] == [(64, 15, 15), (64, 6, 6), (128, 2, 2), (256,), (10,)]
    assert sum(r[3] for r in rows) == 246_474
    assert rows[0].flops == CONV1 and sum(r.flops for r in rows) == CIFAR_CNN_FORWARD
    text = format_summary("cifar_cnn", model, (3, 32, 32))
    assert text.splitlines()[1].split() == ["layer", "type", "output", "shape", "params", "MFLOPs"]
    assert "features.0  ConvReluPool  (64, 15, 15)" in text and "Forward: 18.20 MFLOPs per image" in text
    assert "Training: 51.48 MFLOPs per image" in text and text.endswith("Total parameters: 246,474")


@pytest.mark.parametrize("name", list(MODELS))
def test_rows_add_up_and_leave_the_model_alone(name):
    shape = MODELS[name].reference_shape
    torch.manual_seed(0)
    model = build_model(name, shape, 10)
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    rows = summarize(model, shape)
    assert sum(r.params for r in rows) == count_parameters(model)
    assert sum(r.flops for r in rows) == forward_flops(model, shape)
    assert training_flops(model, shape) > forward_flops(model, shape)
    assert rows[-1].shape == (10,) and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm statistics too
    assert all(p.grad is None for p in model.parameters()) and torch.equal(torch.get_rng_state(), rng)


def test_resnet18_table_opens_two_levels():
    model = _torchvision("resnet18")
    rows = summarize(model, (3, 32, 32))
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert [r.name for r in rows] == ["conv1", "bn1", "relu", "maxpool", *blocks, "avgpool", "fc"]
    assert rows[4].type == "BasicBlock" and rows[4].shape == (64, 8, 8) and rows[-1].shape == (10,)
    assert rows[-3].shape == (512, 1, 1)
    assert sum(r.params for r in rows) == count_parameters(model) == 11_181_642
    assert sum(r.flops for r in rows) == forward_flops(model, (3, 32, 32))


def test_training_flops_leave_batchnorm_statistics_gradients_rng_and_mode_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                          nn.Linear(8 * 5 * 7, 10, bias=False), nn.BatchNorm1d(10))
    head = model[5]
    head.weight.grad = torch.ones_like(head.weight)
    model.eval()
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    forward = 2 * 5 * 7 * 8 * 27 + 2 * 280 * 10  # (3, 7, 9) -> (8, 5, 7) -> 10
    assert training_flops(model, (3, 7, 9)) == 3 * forward - 2 * 5 * 7 * 8 * 27
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running stats, batches tracked
    assert torch.equal(torch.get_rng_state(), rng) and not model.training  # dropout drew from a forked RNG
    assert torch.equal(head.weight.grad, torch.ones_like(head.weight)) and model[0].weight.grad is None


class _Tutorial(nn.Module):
    """A user's net: a Sequential, a functional flatten and ReLU, a module used twice, and a
    parameter and a matmul of its own outside any child."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                                      nn.MaxPool2d(2))
        self.act = nn.ReLU()
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.proj = nn.Parameter(torch.randn(120, 10) / 11)  # (120, 10)
        self.unused = nn.Linear(4, 4)

    def forward(self, x):
        x = torch.flatten(self.features(x), 1)  # (B, 400)
        return self.act(self.act(self.fc1(x))) @ self.proj  # (B, 10)


def test_a_user_model_with_own_parameters_a_shared_module_and_an_unused_one():
    model = _Tutorial()
    rows = {r.name: r for r in summarize(model, (3, 32, 32))}
    assert list(rows) == ["(model)", "features.0", "features.1", "features.2", "features.3", "features.4",
                          "features.5", "act", "fc1", "unused"]
    assert rows["(model)"].type == "_Tutorial (own)" and rows["(model)"].params == 1_200
    assert rows["(model)"].flops == 2 * 120 * 10  # the matmul in forward, outside every child
    assert rows["features.5"].shape == (16, 5, 5) and rows["fc1"].shape == (120,)
    assert rows["unused"].shape is None and rows["unused"].flops == 0
    assert sum(r.params for r in rows.values()) == count_parameters(model)
    assert sum(r.flops for r in rows.values()) == forward_flops(model, (3, 32, 32))
    text = format_summary("nets.py:Net", model, (3, 32, 32))
    assert text.splitlines()[-5].split() == ["unused", "Linear", "-", "20", "0.00"]  # never ran


def test_a_bare_sequential_with_a_module_registered_twice_and_a_tied_weight():
    torch.manual_seed(0)
    encode, decode = nn.Linear(12, 12), nn.Linear(12, 12)
    decode.weight = encode.weight  # tied: one parameter in two modules
    twice = nn.Linear(12, 12, bias=False)
    model = nn.Sequential(nn.Flatten(), encode, nn.ReLU(), decode, twice, twice)
    rows = summarize(model, (3, 2, 2))
    assert [r.name for r in rows] == ["0", "1", "2", "3", "4"]  # the module registered twice is one row
    assert [r.params for r in rows] == [0, 156, 0, 12, 144]  # the tied weight counts in its first row
    assert rows[4].flops == 2 * (2 * 12 * 12) and rows[4].shape == (12,)  # called twice
    assert sum(r.params for r in rows) == count_parameters(model) == 312


def test_a_model_with_several_outputs():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(1, 4, 3)
            self.heads = nn.ModuleDict({"a": nn.Linear(4 * 5 * 5, 3), "b": nn.Linear(4 * 5 * 5, 2)})

        def forward(self, x):
            z = torch.flatten(self.body(x), 1)
            return {name: head(z) for name, head in self.heads.items()}

    model = TwoHeads()
    rows = summarize(model, (1, 7, 7))
    assert [(r.name, r.shape) for r in rows] == [("body", (4, 5, 5)), ("heads.a", (3,)), ("heads.b", (2,))]
    forward = 2 * 5 * 5 * 4 * 9 + 2 * 100 * 5
    assert forward_flops(model, (1, 7, 7)) == forward
    assert training_flops(model, (1, 7, 7)) == 3 * forward - 2 * 5 * 5 * 4 * 9  # no input gradient for the image


def test_scripted_modules_take_no_hooks_and_are_rows_with_their_own_shape_and_flops():
    """torch.jit.script'ed modules refuse forward hooks: a scripted part, or a scripted model, is one
    row (its children are not run by Python), measured through a plain stand-in; the rows add up."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        block = torch.jit.script(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()))
        whole = torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)))
    part = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), block, nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    for model in (part, whole):
        rows = summarize(model, (3, 6, 6))
        assert sum(r.params for r in rows) == count_parameters(model)
        assert sum(r.flops for r in rows) == forward_flops(model, (3, 6, 6)) > 0
    rows = {r.name: r for r in summarize(part, (3, 6, 6))}
    assert rows["1"].shape == (4, 6, 6) and rows["1"].flops == 2 * 4 * 4 * 9 * 36 and "1.0" not in rows
    assert part[1] is block  # put back
    assert [r.shape for r in summarize(whole, (3, 6, 6))] == [(5,)]


def test_a_compiled_model_is_measured_eagerly():
    """model.compile() in place, as Runtime.prepare does: measured without compiling anything."""
    model = build_model("cifar_cnn", (3, 32, 32), 10)
    model.compile()
    assert training_flops(model, (3, 32, 32)) == 51_480_576
    assert forward_flops(model, (3, 32, 32)) == CIFAR_CNN_FORWARD


def test_a_model_running_the_triton_kernel_is_measured_through_its_eager_op():
    """The kernel's work is invisible to the counter, so the fused blocks run their eager op while
    measured (and, on CPU, the slow interpreter never runs)."""
    pytest.importorskip("triton")
    from engine.config import Config
    from engine.runtime import Runtime

    model = build_model("cifar_cnn", (3, 32, 32), 10)
    cfg = Config(device="cpu", amp=False, triton=True, channels_last=False)
    runtime = Runtime.from_config(cfg, warn=lambda *_: None)
    runtime.prepare(model)
    kernel = model.features[0].op
    assert training_flops(model, (3, 32, 32)) == 51_480_576
    assert model.features[0].op is kernel


@pytest.mark.slow
def test_importing_the_models_loads_no_triton():
    """torch.utils.flop_counter imports triton, which on CPU must wait until --triton has chosen
    Triton's interpreter (engine.runtime.use_triton): the summary imports it only to measure."""
    code = "import sys, engine.models; print('triton' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr
