"""engine.models.fast: fast_cifar's and fast_cifar94's layouts, that they learn, the patch-whitening and dirac
inits, and fast_cifar94 end to end (its whitening bias frozen after 3 epochs, resumed, exported)."""

import pytest
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


@pytest.mark.slow
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


def test_fast_cifar94_is_airbench94_s_layout():
    """Widths 64/256/256; the stem is conv (with a zero bias) -> GELU, no BatchNorm; the bias alone is
    limited to the first 3 epochs (the whitening weight is frozen by its init)."""
    model = build_model("fast_cifar94", (3, 32, 32), 10)
    assert [tuple(b.conv2.weight.shape[:2]) for b in model.blocks] == [(64, 64), (256, 256), (256, 256)]
    assert [type(m) for m in model.stem] == [torch.nn.Conv2d, torch.nn.GELU]
    assert torch.equal(model.stem[0].bias, torch.zeros(24))
    assert model.epoch_limited() == {model.stem[0].bias: 3}
    assert build_model("fast_cifar", (3, 32, 32), 10).epoch_limited() == {}  # fast_cifar unchanged
    assert count_parameters(model) == 1_972_792


def test_dirac_init_makes_the_first_in_channels_filters_the_identity():
    """Every block conv's first Cin filters pass input channel i to output i unchanged; a conv with
    Cout == Cin is then the identity, and the filters beyond Cin keep the default (random) init."""
    torch.manual_seed(0)
    model = build_model("fast_cifar94", (3, 32, 32), 10)
    x = torch.randn(2, 256, 7, 9)
    for block in model.blocks:
        for conv in (block.conv1, block.conv2):
            cin, cout = conv.in_channels, conv.out_channels
            out = conv(x[:, :cin])  # (2, Cout, 7, 9): 3x3 with padding 1 keeps the size
            torch.testing.assert_close(out[:, :cin], x[:, :cin], rtol=0, atol=0)
            if cout > cin:  # the rest: Kaiming-uniform, not touched
                rest = conv.weight[cin:]
                bound = 1 / (cin * 9) ** 0.5
                assert rest.abs().max() <= bound and rest.std() > bound / 3
    plain = build_model("fast_cifar", (3, 32, 32), 10).blocks[1].conv2.weight  # no dirac init for fast_cifar
    assert not torch.equal(plain[:, :, 1, 1].diagonal(), torch.ones(64))


@pytest.mark.slow
def test_fast_cifar94_trains_freezes_its_whitening_bias_resumes_bit_for_bit_and_exports(tmp_path):
    """Its recipe at batch 16 on 32 synthetic images (2 steps an epoch), 4 epochs: a run stopped after
    epoch 2 and after epoch 3 and resumed each time ends bit for bit where the whole run does; the
    whitening bias trains in epochs 1-3 and not in 4; evaluation at tta 2; the ONNX file is the plain
    model, verified against PyTorch."""
    from engine.checkpoint import load
    from engine.config import Config
    from engine.models import MODELS
    from engine.train import train
    from export.onnx_export import export_onnx

    values = {**MODELS["fast_cifar94"].recipe, "model": "fast_cifar94", "epochs": 4, "batch_size": 16, "lr": 0.02,
              "limit_train": 32, "limit_test": 16, "amp": False, "quiet": True, "device": "cpu"}
    assert values["flip"] == "alternate" and values["tta"] == 2 and values["optimizer"] == "muon"
    out, metrics = train(Config(out=str(tmp_path / "whole"), **values), log=lambda *_: None)
    assert [m["tta"] for m in metrics] == [2] * 4 and all(0 <= m["test_acc"] <= 1 for m in metrics)

    def stop_after(epoch):
        def log(line):
            if line.startswith(f"Epoch: {epoch},"):
                raise KeyboardInterrupt  # as Ctrl-C once the epoch was saved
        return log

    parts = tmp_path / "parts"
    with pytest.raises(KeyboardInterrupt, match="interrupted"):
        train(Config(out=str(parts), **values), log=stop_after(2))
    second = load(parts / "last.pt")
    with pytest.raises(KeyboardInterrupt, match="interrupted"):
        train(Config.from_dict(second.config), resume=second, log=stop_after(3))
    third = load(parts / "last.pt")
    train(Config.from_dict(third.config), resume=third, log=lambda *_: None)
    whole, resumed = load(out / "last.pt"), load(parts / "last.pt")
    assert (second.epoch, third.epoch, resumed.epoch) == (2, 3, 4)
    for key, value in whole.model.items():
        assert torch.equal(value, resumed.model[key]), key
    bias = [c.model["stem.0.bias"] for c in (second, third, whole)]
    assert torch.count_nonzero(bias[0]) > 0 and not torch.equal(bias[0], bias[1])  # trained (from 0) to epoch 3
    assert torch.equal(bias[1], bias[2])  # frozen in epoch 4
    assert "stem.0.bias" not in third.frozen and "stem.0.bias" in whole.frozen  # no gradient from epoch 4 on
    assert not torch.equal(third.model["head.weight"], whole.model["head.weight"])  # while the rest trains
    onnx = tmp_path / "fast94.onnx"
    result = export_onnx(onnx, out / "last.pt", log=lambda *_: None)
    assert result.parity is not None and onnx.stat().st_size > 7_000_000  # 1.97M float32 weights


@pytest.mark.slow
def test_a_zoo_net_that_cannot_train_one_image_at_a_time_is_one_usage_error(tmp_path):
    """fast_cifar's last block sees 1x1 features of 16x16 images: at --batch-size 1 its BatchNorm has one
    value per channel and cannot train. The zoo is built without the user models' probe, so this was
    torch's ValueError with a traceback from the precision measurement; now one line, before any file."""
    from PIL import Image

    from engine.config import Config
    from engine.errors import UsageError
    from engine.train import train

    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (16, 16), (40 * i, 100 if label == "a" else 200, 0)).save(tmp_path / "images" / label / f"{i}.png")
    values = {"model": "fast_cifar", "data": str(tmp_path / "images"), "cache_dir": str(tmp_path / "cache"),
              "epochs": 1, "batch_size": 1, "amp": False, "quiet": True}
    with pytest.raises(UsageError, match=r"^fast_cifar cannot take 3x16x16 images: its forward in training mode at "
                                         r"--batch-size 1 raised ValueError.*; train with --batch-size 2 or more"):
        train(Config(out=str(tmp_path / "run"), **values), log=lambda *_: None)
    assert not (tmp_path / "run" / "last.pt").exists()
    _, metrics = train(Config(out=str(tmp_path / "two"), **{**values, "batch_size": 2}), log=lambda *_: None)
    assert len(metrics) == 1  # two images a step train
