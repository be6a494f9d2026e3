"""engine.models: the tutorials' parameter counts, input-shape fitting and the block's eager op."""

import pytest
import torch
import torch.nn.functional as F

from engine.errors import UsageError
from engine.models import MODELS, ConvReluPool, build_model, count_parameters, format_summary, smallest_side, summarize


@pytest.mark.parametrize("name, expected", [("cifar_cnn", 246_474), ("cifar_seq", 145_578), ("mnist_cnn", 824_458)])
def test_parameter_counts_match_the_tutorials(name, expected):
    model = build_model(name, MODELS[name].reference_shape, 10)
    assert count_parameters(model) == expected == MODELS[name].reference_params


def test_summary_total_and_output_shapes():
    model = build_model("cifar_cnn", (3, 32, 32), 10)
    rows = summarize(model, (3, 32, 32))
    assert [r[2] for r in rows] == [(64, 15, 15), (64, 6, 6), (128, 2, 2), (256,), (10,)]
    assert sum(r[3] for r in rows) == 246_474
    assert format_summary("cifar_cnn", model, (3, 32, 32)).endswith("Total parameters: 246,474")


def test_first_conv_and_flatten_follow_the_input_shape():
    digits = build_model("cifar_cnn", (1, 28, 28), 10)
    assert digits.features[0].conv.in_channels == 1
    assert digits.fc1.in_features == 128 * 1 * 1  # 28 -> 26 -> 13 -> 11 -> 5 -> 3 -> 1
    assert digits(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    colour = build_model("mnist_cnn", (3, 32, 32), 7)
    assert colour.fc1.in_features == 64 * 8 * 8
    assert colour(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    wide = build_model("cifar_seq", (3, 24, 40), 10)
    assert wide(torch.zeros(1, 3, 24, 40)).shape == (1, 10)


@pytest.mark.parametrize("name", list(MODELS))
def test_smallest_side_is_exact(name):
    side = smallest_side(MODELS[name])
    build_model(name, (3, side, side), 10)(torch.zeros(1, 3, side, side))
    with pytest.raises(UsageError, match=f"at least {side}x{side}"):
        build_model(name, (3, side - 1, side - 1), 10)


def test_unknown_model_and_too_few_classes():
    with pytest.raises(UsageError, match="unknown model 'resnet'"):
        build_model("resnet", (3, 32, 32), 10)
    with pytest.raises(UsageError, match="at least 2"):
        build_model("cifar_cnn", (3, 32, 32), 1)


def test_state_dict_keys_name_the_blocks():
    keys = list(build_model("mnist_cnn", (1, 28, 28), 10).state_dict())
    assert keys == ["features.0.conv.weight", "features.0.conv.bias", "features.1.conv.weight",
                    "features.1.conv.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


@pytest.mark.parametrize("size, padding", [(15, 0), (16, 1), (9, 2)])
def test_block_matches_relu_then_pool_in_values_and_gradients(size, padding):
    """The block pools before its ReLU; that must equal max_pool2d(relu(conv)) exactly."""
    torch.manual_seed(size)
    block = ConvReluPool(3, 5, 3, padding=padding)
    x = torch.randn(4, 3, size, size, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    out = block(x)
    ref = F.max_pool2d(F.relu(block.conv(x_ref)), 2)
    assert torch.equal(out, ref)
    grad = torch.randn_like(out)
    out.backward(grad)
    w_grad, b_grad = block.conv.weight.grad.clone(), block.conv.bias.grad.clone()
    block.zero_grad()
    ref.backward(grad)
    assert torch.equal(x.grad, x_ref.grad)
    assert torch.equal(w_grad, block.conv.weight.grad)
    assert torch.equal(b_grad, block.conv.bias.grad)


def test_block_op_is_swappable_and_not_saved():
    block = ConvReluPool(1, 2, 3)
    calls = []
    block.op = lambda x, w, b, stride, padding, pool: calls.append((stride, padding, pool)) or torch.zeros(1)
    block(torch.zeros(1, 1, 8, 8))
    assert calls == [(1, 0, 2)]
    assert set(block.state_dict()) == {"conv.weight", "conv.bias"}
