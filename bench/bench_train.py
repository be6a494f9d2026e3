"""Training throughput on the real CIFAR-10 JPEG copy: the tutorial's loop beside engine's paths.

Run: `python -m pytest bench/bench_train.py` (add `-k` to pick cases). Each case trains real
steps on `../shared/datasets/cifar10-jpeg.tar.gz` and skips when that file is absent.
`extra_info` carries images/s; every case checks afterwards that training really learned.

- tutorial: the seed tutorial's loop, unchanged in spirit: torchvision ImageFolder on the
  extracted JPEGs, DataLoader(batch 32, shuffle) with ToTensor, NCHW fp32, SGD lr 0.01.
- engine-*: `engine.train.train` itself on the decoded uint8 cache, one epoch of
  `LIMIT` images, steady-state img/s as the epoch line reports it.
- three-epochs: the issue's acceptance run, 3 full epochs with the defaults, >= 60% test acc.
- second-start: seconds from `engine train` starting to its first training step, cache warm.
"""

import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
LIMIT = 12_800  # images per engine case: 200 steps of 64
TUTORIAL_STEPS = 300

pytestmark = pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"needs {ARCHIVE}")


def machine():
    return {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": str(torch.__version__), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cifar10-jpeg")
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(folder, filter="data")
    return folder


def tutorial_loop(folder, steps):
    """The tutorial's training loop; returns (images/s over `steps` after 10 warm-up steps, losses)."""
    from torchvision import datasets, transforms

    from engine.models import build_model

    torch.manual_seed(0)
    data = datasets.ImageFolder(str(folder / "train"), transform=transforms.ToTensor())
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True)
    model = build_model("cifar_cnn", (3, 32, 32), 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    losses, started = [], None
    for i, (x, y) in enumerate(loader):
        if i == 10:
            started = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if i == 10 + steps:
            break
    return steps * 32 / (time.perf_counter() - started), losses


def test_tutorial_loop(benchmark, jpeg_folder):
    result = benchmark.pedantic(tutorial_loop, args=(jpeg_folder, TUTORIAL_STEPS), rounds=1, iterations=1)
    images_per_s, losses = result
    benchmark.extra_info.update(machine(), images_per_s=round(images_per_s, 1), batch=32)
    print(f"\ntutorial loop: {images_per_s:,.0f} img/s")
    assert sum(losses[-50:]) / 50 < sum(losses[:50]) / 50  # it learns


ENGINE_CASES = {
    "fp32-nchw": dict(amp=False, channels_last=False),
    "fp32-channels_last": dict(amp=False),
    "bf16-channels_last": dict(amp=True),
    "fp32-channels_last-compile": dict(amp=False, compile=True),
    "bf16-channels_last-compile": dict(amp=True, compile=True),
}


@pytest.mark.parametrize("case", list(ENGINE_CASES))
def test_engine_epoch(benchmark, tmp_path, case):
    from engine.config import Config
    from engine.runtime import cpu_has_native_bf16
    from engine.train import train

    cfg = Config(data=str(ARCHIVE), epochs=1, limit_train=LIMIT, limit_test=2_000, quiet=True,
                 out=str(tmp_path / "run"), **ENGINE_CASES[case])
    _, metrics = benchmark.pedantic(train, args=(cfg,), kwargs={"log": lambda *_: None}, rounds=1, iterations=1)
    m = metrics[0]
    benchmark.extra_info.update(machine(), images_per_s=m["images_per_s"], warmup_s=m["warmup_s"],
                                batch=cfg.batch_size, native_bf16=cpu_has_native_bf16())
    print(f"\nengine {case}: {m['images_per_s']:,.0f} img/s steady, warm-up {m['warmup_s']:.1f} s")
    assert m["test_acc"] > 0.25  # one short epoch is already far above chance (0.1)


def test_three_epochs_reach_60_percent(benchmark, tmp_path):
    from engine.config import Config
    from engine.train import train

    cfg = Config(data=str(ARCHIVE), epochs=3, quiet=True, out=str(tmp_path / "run"))
    _, metrics = benchmark.pedantic(train, args=(cfg,), kwargs={"log": lambda *_: None}, rounds=1, iterations=1)
    benchmark.extra_info.update(machine(), test_acc=[m["test_acc"] for m in metrics],
                                images_per_s=[m["images_per_s"] for m in metrics])
    print(f"\n3 epochs: test acc {[m['test_acc'] for m in metrics]}, img/s {[m['images_per_s'] for m in metrics]}")
    assert metrics[-1]["test_acc"] >= 0.60
    assert min(m["images_per_s"] for m in metrics) > 0


def seconds_to_first_step(tmp_path):
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "engine", "train", "--data", str(ARCHIVE), "--epochs", "1",
                                "--out", str(tmp_path / f"run{time.time_ns()}")], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in process.stdout:
        if line.startswith("Run: "):  # printed right before the first training step
            elapsed = time.perf_counter() - started
            break
    process.kill()
    process.wait()
    return elapsed


def test_second_start(benchmark, tmp_path):
    seconds_to_first_step(tmp_path)  # decodes and caches if this machine has not yet
    elapsed = benchmark.pedantic(seconds_to_first_step, args=(tmp_path,), rounds=3, iterations=1)
    benchmark.extra_info.update(machine(), seconds_to_first_step=round(elapsed, 2))
    print(f"\nsecond start: {elapsed:.2f} s to the first training step")
    assert elapsed < 5.0
