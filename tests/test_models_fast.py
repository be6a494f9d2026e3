"""engine.models.fast: fast_cifar's layout, that it learns, and its patch-whitening init."""

import torch
import torch.nn.functional as F

from engine.models import build_model, count_parameters


def test_layout_and_logit_scale():
    model = build_model("fast_cifar", (3, 32, 32), 10)
    assert [tuple(b.conv2.weight.shape[:2]) for b in model.blocks] == [(32, 32), (64, 64), (128, 128)]
    assert model.head.bias is None and model.logit_scale == 1 / 9
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    features = torch.flatten(torch.nn.functional.adaptive_max_pool2d(model.blocks(model.stem(x)), 1), 1)  # global max
    torch.testing.assert_close(model(x), model.head(features) / 9)


def test_channels_last_gives_the_same_logits():
    torch.manual_seed(0)
    model = build_model("fast_cifar", (3, 20, 24), 10).eval()
    x = torch.randn(3, 3, 20, 24)
    expected = model(x)
    model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x.to(memory_format=torch.channels_last)), expected, rtol=1e-4, atol=1e-5)


def test_fast_cifar_memorises_64_noise_images():
    """Random labels on Gaussian noise: only memorising each image lowers the loss."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g)
    model = build_model("fast_cifar", (3, 32, 32), 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, nesterov=True)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 2.0  # about log(10): the 1/9 logit scale starts near uniform
    assert losses[-1] < 0.1, losses  # seeded runs reach about 0.01


def test_whitening_init_gives_identity_covariance_and_freezes_the_stem():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(200, 3, 17, 17, generator=g)
    # neighbouring pixels and channels correlated, as in photographs
    images = noise + 0.8 * noise.roll(1, dims=3) + 0.5 * noise.roll(1, dims=1)
    images = (images - images.mean((0, 2, 3), keepdim=True)) / images.std((0, 2, 3), keepdim=True)
    model = build_model("fast_cifar", (3, 16, 16), 10)
    model.init_from_data(images[:, :, :16, :16], chunk=64)
    stem = model.stem[0]
    assert not stem.weight.requires_grad
    out = F.conv2d(images[:, :, :16, :16], stem.weight)  # (N, 24, 15, 15)
    whitened = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12).double()
    covariance = whitened.T @ whitened / len(whitened)
    torch.testing.assert_close(covariance, torch.eye(12, dtype=torch.float64), rtol=0, atol=0.01)
    torch.testing.assert_close(out[:, 12:], -out[:, :12])
    raw = images[:, :, :16, :16].unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
    assert (raw.T @ raw / len(raw) - torch.eye(12)).abs().max() > 0.3  # the data really was correlated
    # frozen: a training step leaves it alone, and the model still learns through the rest
    before = stem.weight.clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    F.cross_entropy(model(images[:8, :, :16, :16]), torch.arange(8) % 10).backward()
    optimizer.step()
    assert torch.equal(stem.weight, before) and stem.weight.grad is None
    assert count_parameters(model) > 0


def test_whitening_init_works_for_greyscale():
    images = torch.randn(20, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    model = build_model("fast_cifar", (1, 28, 28), 10).init_from_data(images)
    assert model.stem[0].weight.shape == (8, 1, 2, 2) and not model.stem[0].weight.requires_grad
