"""engine.data.stream and engine.data.filecache: a set that does not fit in memory is decoded into a
memory-mapped file cache and streamed, giving the same batches and the same weights as in memory.

ENGINE_MEMORY_LIMIT (a test-only setting, engine.memory) makes small real image folders in
tmp_path behave as sets larger than the machine.
"""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from engine.data.imagefolder import read
from engine.data.stream import Rows, read_ahead
from engine.errors import EngineError, UsageError
from engine.loader import BatchLoader

CLASSES = ["ant", "bee", "cow"]
QUIET = {"log": lambda *_: None}


def folder(root, counts=(("train", 24), ("test", 6)), size=(32, 32), mode="RGB", seed=0):
    """Random-content PNGs (lossless: decoded values are exact) under root/<split>/<class>/; a split
    of None writes <class>/ folders with no split. Returns root."""
    rng = np.random.default_rng(seed)
    for split, n in counts:
        for name in CLASSES:
            where = root / split / name if split else root / name
            where.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(where / f"{k:03d}.png")
    return root


@pytest.fixture
def streaming(monkeypatch):
    """Force streaming: 1 kB of memory for the data."""
    monkeypatch.setenv("ENGINE_MEMORY_LIMIT", "1000")


def mapped_files():
    with open("/proc/self/maps") as maps:
        return {line.split()[-1] for line in maps if len(line.split()) >= 6}


def test_a_set_that_does_not_fit_is_decoded_into_a_memory_mapped_file_cache(tmp_path, monkeypatch):
    path = folder(tmp_path / "images")
    memory = read(path, tmp_path / "memory", **QUIET)
    monkeypatch.setenv("ENGINE_MEMORY_LIMIT", "1000")
    said = []
    streamed = read(path, tmp_path / "cache", log=said.append)
    assert any("into a file cache, chunk by chunk: 90 images" in line for line in said)
    assert isinstance(streamed.train_x, Rows) and isinstance(streamed.test_x, Rows)
    assert "does not fit in memory" in streamed.train_x.why
    assert streamed.train_x.shape == memory.train_x.shape == (72, 3, 32, 32)
    assert torch.equal(streamed.train_x[:], memory.train_x) and torch.equal(streamed.test_x[:], memory.test_x)
    assert torch.equal(streamed.train_y, memory.train_y) and streamed.classes == memory.classes == CLASSES
    assert streamed.spec() == memory.spec()  # exact statistics, counted chunk by chunk
    (cache,) = (tmp_path / "cache").iterdir()
    assert cache.name.endswith(".stream") and sorted(p.name for p in cache.iterdir()) == ["images.u8", "index.pt"]
    assert str(cache / "images.u8") in mapped_files()  # memory-mapped, not read into memory
    again = read(path, tmp_path / "cache", log=said.append)
    assert "decoded earlier" in said[-1] and torch.equal(again.train_x[:], memory.train_x)
    monkeypatch.delenv("ENGINE_MEMORY_LIMIT")
    fits = read(path, tmp_path / "cache", **QUIET)  # the same file cache, now small enough: in memory
    assert not isinstance(fits.train_x, Rows) and torch.equal(fits.train_x, memory.train_x)


def test_subsets_of_a_streamed_set_are_index_views_with_the_in_memory_images(tmp_path, monkeypatch):
    path = folder(tmp_path / "images", counts=((None, 20),))  # no split: --test-split holds out a test set
    memory = read(path, tmp_path / "memory", test_split="20%", seed=3, **QUIET).hold_out(7, 3).limit(30, 5, 3)
    monkeypatch.setenv("ENGINE_MEMORY_LIMIT", "1000")
    streamed = read(path, tmp_path / "cache", test_split="20%", seed=3, **QUIET).hold_out(7, 3).limit(30, 5, 3)
    for split in ("train", "val", "test"):
        x = getattr(streamed, f"{split}_x")
        assert isinstance(x, Rows) and x.base.shape == (60, 3, 32, 32)  # the whole file, never copied
        assert torch.equal(x[:], getattr(memory, f"{split}_x"))
        assert torch.equal(getattr(streamed, f"{split}_y"), getattr(memory, f"{split}_y"))
    assert (len(streamed.train_x), len(streamed.val_x), len(streamed.test_x)) == (30, 7, 5)


def loaders(x, y, **kwargs):
    """The same loader over x in memory and over a streamed view of the same images."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    base = torch.zeros_like(x)
    base[order] = x  # stored in another order, as a file cache stores the source's order
    args = dict(batch_size=8, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3], device="cpu", **kwargs)
    return BatchLoader(x, y, **args), BatchLoader(Rows(base, order, "a test"), y, **args)


@pytest.mark.parametrize("rank", [0, 1])
def test_streamed_batches_equal_in_memory_batches_from_any_step(rank):
    torch.manual_seed(1)
    x, y = torch.randint(0, 256, (53, 3, 10, 12), dtype=torch.uint8), torch.randint(0, 5, (53,))
    memory, streamed = loaders(x, y, train=True, seed=7, rank=rank, world=2)
    assert streamed.why == "a test" and memory.why is None and len(memory) == len(streamed) == 3
    for epoch, skip in ((0, 0), (2, 0), (2, 2)):  # skip: a run resumed mid-epoch
        a, b = list(memory.epoch(epoch, skip)), list(streamed.epoch(epoch, skip))
        assert len(a) == len(b) == 3 - skip
        for (xa, ya, ca), (xb, yb, cb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and ca == cb
    memory, streamed = loaders(x, y, train=False, rank=rank, world=2)
    for (xa, ya, ca), (xb, yb, cb) in zip(memory.epoch(0), streamed.epoch(0), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and ca == cb  # padded last batch included


def test_read_ahead_keeps_order_raises_the_producers_error_and_stops_when_closed():
    cpu = torch.device("cpu")
    assert [a for a, _ in read_ahead(lambda k: (k, torch.zeros(1)), range(20), cpu)] == list(range(20))

    def failing(key):
        if key == 3:
            raise ValueError("bad row")
        return key, torch.zeros(1)

    with pytest.raises(ValueError, match="bad row"):
        list(read_ahead(failing, range(10), cpu))
    produced = []
    batches = read_ahead(lambda k: produced.append(k) or (k, torch.zeros(1)), range(10_000), cpu, depth=2)
    next(batches)
    batches.close()  # a run that stops mid-epoch (--target-acc, Ctrl-C)
    assert not any(t.name == "engine-read-ahead" for t in threading.enumerate())
    assert len(produced) < 10  # the thread stopped: at most depth ahead


@pytest.mark.slow
def test_forced_streaming_trains_to_the_same_weights_bit_for_bit(tmp_path, monkeypatch):
    from engine.config import Config
    from engine.train import train

    path = folder(tmp_path / "images", counts=(("train", 32), ("val", 8)))

    def run(name):
        said = []
        cfg = Config(data=str(path), cache_dir=str(tmp_path / f"cache-{name}"), epochs=2, batch_size=16, seed=5,
                     val_split="12", amp=False, device="cpu", out=str(tmp_path / name))
        train(cfg, log=said.append)
        return torch.load(tmp_path / name / "last.pt", weights_only=True), said

    memory, said_memory = run("memory")
    monkeypatch.setenv("ENGINE_MEMORY_LIMIT", "1000")
    streamed, said = run("streamed")
    assert not any("Streaming" in line for line in said_memory)
    assert any(line.startswith("Streaming 84 train and 24 test images") and "does not fit in memory" in line
               for line in said)
    assert memory["metrics"][-1]["train_loss"] == streamed["metrics"][-1]["train_loss"]
    assert memory["model"].keys() == streamed["model"].keys()
    for key, value in memory["model"].items():
        assert torch.equal(value, streamed["model"][key]), key


def dead_pid():
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_killed_decode_leaves_nothing_half_valid(tmp_path, streaming):
    path = folder(tmp_path / "images", counts=(("train", 4), ("test", 2)))
    first = read(path, tmp_path / "cache", **QUIET)
    (cache,) = (tmp_path / "cache").iterdir()
    (cache / "index.pt").unlink()  # as if killed between the images and the index: never opened
    stale = tmp_path / "cache" / f".{cache.name}.tmp{dead_pid()}"
    stale.mkdir()
    (stale / "images.u8").write_bytes(b"\0" * 100)
    said = []
    again = read(path, tmp_path / "cache", log=said.append)
    assert any("Decoding" in line for line in said)  # decoded again, not read half-made
    assert torch.equal(again.train_x[:], first.train_x[:])
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [cache.name]  # the stale temporary is gone


def test_a_colour_image_among_grey_ones_decodes_again_in_rgb_as_in_memory(tmp_path, monkeypatch):
    path = folder(tmp_path / "images", counts=(("train", 4), ("test", 2)), mode="L")
    Image.fromarray(np.full((32, 32, 3), (200, 10, 90), dtype=np.uint8)).save(path / "train" / "cow" / "zz.png")
    memory = read(path, tmp_path / "memory", **QUIET)
    monkeypatch.setenv("ENGINE_MEMORY_LIMIT", "1000")
    said = []
    streamed = read(path, tmp_path / "cache", log=said.append)
    assert any("decoding again in RGB" in line for line in said)
    assert streamed.train_x.shape == memory.train_x.shape == (13, 3, 32, 32)
    assert torch.equal(streamed.train_x[:], memory.train_x) and torch.equal(streamed.test_x[:], memory.test_x)


def test_a_streamed_decode_says_the_files_it_does_not_read_and_every_run_from_its_cache_again(tmp_path, streaming):
    path = folder(tmp_path / "images", counts=(("train", 3), ("test", 1)))
    (path / "train" / "ant" / "notes.txt").write_text("not an image")
    for attempt in ("decode", "cache"):
        said = []
        read(path, tmp_path / "cache", log=said.append)
        assert any(line.startswith("Not used: 1 file of") and "(.txt 1)" in line for line in said), (attempt, said)


def test_mixed_sizes_in_a_streamed_decode_are_one_line_and_an_image_size_fits_them(tmp_path, streaming):
    path = folder(tmp_path / "images", counts=(("train", 3), ("test", 2)))
    Image.fromarray(np.zeros((20, 40, 3), dtype=np.uint8)).save(path / "train" / "bee" / "wide.png")
    with pytest.raises(UsageError, match=r"images differ in size \(32x32 .*, 20x40 .*wide.png, as HxW\); .* pass --image-size"):
        read(path, tmp_path / "cache", **QUIET)
    assert list((tmp_path / "cache").iterdir()) == []  # nothing half-written
    data = read(path, tmp_path / "cache", image_size=(16, 16), **QUIET)
    assert isinstance(data.train_x, Rows) and data.train_x.shape == (10, 3, 16, 16)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MB tmpfs as the cache's disk (root only: mount)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a 1 MB tmpfs")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_a_set_larger_than_the_free_disk_is_one_line_before_decoding(tmp_path, tiny_disk, streaming):
    path = folder(tmp_path / "images", counts=(("train", 60), ("test", 10)), size=(64, 64))  # 2.6 MB decoded
    said = []
    with pytest.raises(EngineError) as error:
        read(path, tiny_disk / "cache", log=said.append)
    message = str(error.value)
    assert "\n" not in message and f"its decoded images need 69.7 MB in the decode cache at {tiny_disk / 'cache'} (2.6 MB, and " \
        "67.1 MB left free beside them), and 1.0 MB is free there" in message
    assert not any("Decoding" in line for line in said)  # refused before a pixel was decoded
    assert list((tiny_disk / "cache").iterdir()) == []


@pytest.mark.slow
def test_engine_train_on_a_set_larger_than_the_free_disk_is_one_line_and_writes_nothing(tmp_path, tiny_disk):
    """The command line's view of the case above (issue 16's bad input): exit 1, one line, no traceback,
    no run directory, nothing in the cache."""
    path = folder(tmp_path / "images", counts=(("train", 60), ("test", 10)), size=(64, 64))
    env = {**os.environ, "ENGINE_MEMORY_LIMIT": "1000", "OMP_NUM_THREADS": "1"}  # the set does not fit: it must stream
    done = subprocess.run([sys.executable, "-m", "engine", "train", "--data", str(path), "--cache-dir",
                           str(tiny_disk / "cache"), "--out", str(tmp_path / "run")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "1.0 MB is free there" in done.stderr
    assert not (tmp_path / "run").exists() and list((tiny_disk / "cache").iterdir()) == []


def test_a_gpu_out_of_memory_is_one_line_saying_what_to_lower():
    from engine.memory import out_of_memory_line

    error = torch.cuda.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 139.72 GiB of which 1.05 GiB is "
        "free. Including non-PyTorch memory, this process has 138.6 GiB memory in use.\nIf reserved but unallocated...")
    line = out_of_memory_line(error)
    assert "\n" not in line and line.startswith("the GPU ran out of memory (it asked for 2.00 GiB more, GPU 0 has "
                                                "139.72 GiB, 1.05 GiB free)")
    assert "--batch-size" in line and "--image-size" in line and "--device cpu" in line
    assert out_of_memory_line(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None


@pytest.mark.cuda
def test_on_cuda_a_split_too_large_for_the_gpu_streams_the_same_batches(monkeypatch):
    torch.manual_seed(2)
    x, y = torch.randint(0, 256, (70, 3, 16, 16), dtype=torch.uint8), torch.randint(0, 4, (70,))
    args = dict(batch_size=16, mean=[0.5] * 3, std=[0.25] * 3, device="cuda", train=True, seed=3)
    memory = BatchLoader(x, y, **args)
    monkeypatch.setenv("ENGINE_MEMORY_LIMIT", "1000")
    streamed = BatchLoader(x, y, **args)
    assert memory.why is None and "do not fit on cuda" in streamed.why and streamed.x.device.type == "cpu"
    for (xa, ya, _), (xb, yb, _) in zip(memory.epoch(1, skip=1), streamed.epoch(1, skip=1), strict=True):
        assert xb.device.type == "cuda" and torch.equal(xa, xb) and torch.equal(ya, yb)


def test_sizes_read_in_a_unit_that_shows_them():
    from engine.memory import size_text

    assert size_text(38_400) == "38.4 kB"  # a small exported model was "0.0 MB"
    assert size_text(2_600_000) == "2.6 MB" and size_text(11_100_000_000) == "11.10 GB"
