"""The last evaluation batch was padded with zeros to the evaluation's one batch shape and the model ran
on the padded batch, so a forward that uses the batch's statistics at evaluation time (BatchNorm2d with
track_running_stats=False, a layer normalising over the batch) was scored on images mixed with zeros:
`engine eval --eval-batch-size 8` of 21 images scored the last 5 in a batch with 3 zero images. The last
batch is now filled with the images just before it (a batch of real images, of the one shape a compiled
model holds, never of a single image, where a BatchNorm1d raises) and scored on its own images; a DDP
rank's part smaller than a batch runs alone, eagerly (remainder_logits). The compiled evaluation of a
user model (FILE.py:factory) is compared with eager.
"""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from engine.config import Config
from engine.evaluate import evaluate
from engine.loader import BatchLoader
from engine.runtime import Runtime

FP32 = Runtime.from_config(Config(device="cpu", amp=False))


class BatchStats(nn.Module):
    """Normalises with the statistics of the batch it is given, in evaluation too."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6, track_running_stats=False)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).relu().mean((2, 3)))


def chunked(model, loader, images, labels, size):
    """(mean loss, accuracy) of `model` on `images` run `size` at a time, the last batch the last `size`
    images, scored on those no batch before it held."""
    loss, right = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(images), size):
            first = min(start, len(images) - size)
            logits = model(loader.normalise(images[first:first + size]))[start - first:]
            loss += F.cross_entropy(logits, labels[start:start + size], reduction="sum").item()
            right += int((logits.argmax(1) == labels[start:start + size]).sum())
    return loss / len(images), right / len(images)


def data(n=21, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, 6, 6), generator=generator, dtype=torch.uint8),
            torch.randint(0, 3, (n,), generator=generator))


@pytest.mark.parametrize("size", [1, 8, 10, 20, 21])
def test_a_batch_statistics_model_scores_the_last_batch_without_the_zeros(size):
    torch.manual_seed(0)
    model = BatchStats().eval()
    images, labels = data()
    loader = BatchLoader(images, labels, size, [0.5] * 3, [0.25] * 3, device="cpu", train=False, channels_last=False)
    loss, acc = evaluate(model, loader, FP32)
    want_loss, want_acc = chunked(model, loader, images, labels, size)
    assert loss == pytest.approx(want_loss, abs=1e-6) and acc == want_acc


@pytest.mark.slow  # Dynamo traces the model
def test_a_compiled_model_runs_the_last_batch_eagerly_compiling_one_shape():
    torch.manual_seed(0)
    model = BatchStats().eval()
    images, labels = data()
    loader = BatchLoader(images, labels, 8, [0.5] * 3, [0.25] * 3, device="cpu", train=False, channels_last=False)
    want = chunked(model, loader, images, labels, 8)
    shapes = []

    def backend(gm, example_inputs):  # torch.compile's custom-backend contract: called once per graph built
        shapes.append(tuple(example_inputs[0].shape) if example_inputs else None)
        return gm.forward

    compiled = torch.compile(model, backend=backend)
    loss, acc = evaluate(compiled, loader, FP32)
    assert loss == pytest.approx(want[0], abs=1e-6) and acc == want[1]
    assert len(shapes) == 1  # the batch shape alone: the remainder of 5 did not build a second graph


NETS = '''
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8, track_running_stats=False)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).relu().mean((2, 3)))


def factory(num_classes=3):
    return Net(num_classes)
'''


@pytest.mark.slow  # an AOTInductor C++ build
def test_compiled_evaluation_of_a_user_model_agrees_with_eager(tmp_path, monkeypatch):
    from engine.evaluate import evaluate_checkpoint
    from engine.train import train

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 7)):
        for c, name in enumerate(("cat", "dog", "eel")):
            (tmp_path / "photos" / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                pixels[..., c] //= 3
                Image.fromarray(pixels).save(tmp_path / "photos" / split / name / f"{i}.png")
    (tmp_path / "nets.py").write_text(NETS)
    code = f"{tmp_path / 'nets.py'}:factory"
    cache = str(tmp_path / "cache")
    train(Config(model=code, data=str(tmp_path / "photos"), epochs=1, batch_size=8, amp=False, device="cpu", quiet=True,
                 out=str(tmp_path / "run"), cache_dir=cache), log=lambda *_: None)
    monkeypatch.setenv("ENGINE_COMPILE", "always")  # compiled whatever it measures
    flags = {"eval_batch_size": 8, "amp": False, "device": "cpu", "cache_dir": cache}  # 21 images: 8 + 8 + 5
    said = []
    compiled = evaluate_checkpoint(tmp_path / "run" / "best.pt", {**flags, "compile": True}, log=said.append, model=code)
    assert any("AOTInductor" in line for line in said), said
    assert compiled["compile_seconds"] is not None
    eager = evaluate_checkpoint(tmp_path / "run" / "best.pt", flags, log=None, model=code)
    assert compiled["images"] == eager["images"] == 21
    assert compiled["test_acc"] == eager["test_acc"]
    assert compiled["test_loss"] == pytest.approx(eager["test_loss"], abs=1e-5)
    assert torch.equal(compiled["confusion"].counts, eager["confusion"].counts)
    from export.evaluate import evaluate_onnx
    from export.onnx_export import export_onnx

    export_onnx(tmp_path / "net.onnx", tmp_path / "run" / "best.pt", verify=False, log=None, model=code)
    onnx = evaluate_onnx(tmp_path / "net.onnx", {"eval_batch_size": 8, "cache_dir": cache}, log=None)
    assert onnx["test_acc"] == eager["test_acc"]  # the last batch filled alike
    assert onnx["test_loss"] == pytest.approx(eager["test_loss"], abs=1e-5)


class BatchStats1d(BatchStats):
    """A BatchNorm1d over the pooled features: a batch of one image raises."""

    def __init__(self, num_classes=3):
        super().__init__(num_classes)
        self.bn = nn.BatchNorm1d(6, track_running_stats=False)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x).relu().mean((2, 3))))


def test_a_last_batch_of_one_image_is_scored_with_the_images_before_it():
    torch.manual_seed(0)
    model = BatchStats1d().eval()
    images, labels = data()
    loader = BatchLoader(images, labels, 10, [0.5] * 3, [0.25] * 3, device="cpu", train=False, channels_last=False)
    loss, acc = evaluate(model, loader, FP32)  # 21 images: 10, 10 and 1
    assert (loss, acc) == pytest.approx(chunked(model, loader, images, labels, 10), abs=1e-6)


@pytest.mark.slow  # Dynamo traces the model
def test_a_batch_smaller_than_the_one_shape_runs_eagerly():
    from engine.evaluate import remainder_logits
    from engine.inference import CompiledInference

    torch.manual_seed(0)
    model = BatchStats().eval()
    x = torch.randn(5, 3, 6, 6)
    shape = (8, 3, 6, 6)
    with torch.no_grad():
        alone = model(x)
        with_module = CompiledInference(model, shape, torch.contiguous_format, eager=model)  # the runner: any callable
        torch.testing.assert_close(remainder_logits(with_module, x), alone)
        padded = CompiledInference(model, shape, torch.contiguous_format)  # a package loaded without its module
        torch.testing.assert_close(remainder_logits(padded, x), model(torch.cat([x, torch.zeros(3, 3, 6, 6)]))[:5])
        compiled = torch.compile(model, backend=lambda gm, inputs: gm.forward)
        compiled(torch.randn(shape))  # built for the one shape
        torch.testing.assert_close(remainder_logits(compiled, x), alone)
