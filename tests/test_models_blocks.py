"""engine.models.blocks: ConvReluPool's eager op and swappable op, ConvPoolBNBlock's shape and norms."""

import pytest
import torch
import torch.nn.functional as F

from engine.models import ConvPoolBNBlock, ConvReluPool, build_model


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


def test_lenet_stages_are_conv_relu_pool_blocks():
    """So --triton (runtime.use_triton swaps every ConvReluPool's op) covers lenet's convs too."""
    model = build_model("lenet", (3, 32, 32), 10)
    blocks = [m for m in model.modules() if isinstance(m, ConvReluPool)]
    assert [tuple(b.conv.weight.shape) for b in blocks] == [(6, 3, 5, 5), (16, 6, 5, 5)]


@pytest.mark.parametrize("size", [15, 16, 9])
def test_conv_pool_bn_block_halves_and_normalises(size):
    torch.manual_seed(size)
    block = ConvPoolBNBlock(5, 6)
    x = torch.randn(8, 5, size, size).to(memory_format=torch.channels_last)
    out = block(x)
    assert out.shape == (8, 6, size // 2, size // 2) and block.out_size(size) == size // 2
    # the reference written out op by op, with batch statistics (training mode)
    ref = F.max_pool2d(F.conv2d(x, block.conv1.weight, padding=1), 2)
    ref = F.gelu(F.batch_norm(ref, None, None, None, block.norm1.bias, training=True, eps=1e-12))
    ref = F.gelu(F.batch_norm(F.conv2d(ref, block.conv2.weight, padding=1), None, None, None, block.norm2.bias,
                              training=True, eps=1e-12))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)  # fp32, different summation orders


def test_conv_pool_bn_block_norms_follow_airbench():
    block = ConvPoolBNBlock(2, 3)
    for norm in (block.norm1, block.norm2):
        assert norm.momentum == 0.4 and norm.eps == 1e-12
        assert not norm.weight.requires_grad and norm.bias.requires_grad
    assert block.conv1.bias is None and block.conv2.bias is None
    x = torch.randn(4, 2, 8, 8) * 3 + 5
    block(x)  # one training step's statistics move the running mean 40% of the way
    mean = F.max_pool2d(block.conv1(x), 2).mean((0, 2, 3)).detach()
    torch.testing.assert_close(block.norm1.running_mean, 0.4 * mean)
