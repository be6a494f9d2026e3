"""A source whose images change is decoded again under a new key: the entry of its earlier images
(never read again) is removed, not left to grow the cache with every edit; other --image-size
entries of the current images and other sources' entries are kept."""

import os

import numpy as np
from PIL import Image

from engine.data import imagefolder


def _folder(root, n=6, size=(12, 10)):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _entries(cache):
    return sorted(p.name for p in cache.iterdir() if p.name.startswith("photos-"))


def test_an_edited_source_leaves_one_entry(tmp_path):
    src, cache = _folder(tmp_path / "photos"), tmp_path / "cache"
    other = _folder(tmp_path / "b" / "photos")  # the same label, another source: its entry is kept
    imagefolder.read(other, cache, log=lambda s: None)
    imagefolder.read(src, cache, log=lambda s: None)
    imagefolder.read(src, cache, log=lambda s: None, image_size=(8, 8))  # the current images at 8x8: kept
    before = _entries(cache)
    assert len(before) == 3
    Image.new("RGB", (12, 10), (1, 2, 3)).save(src / "cat" / "new.png")
    lines = []
    data = imagefolder.read(src, cache, log=lines.append)
    after = _entries(cache)
    assert len(after) == 3 - 2 + 1  # both of the earlier images' entries removed, the new one written
    assert len(data.train_x) + len(data.test_x) == 13
    assert any("earlier images" in line and "Removed 2" in line for line in lines), lines
    assert imagefolder.read(other, cache, log=lines.append) is not None
    assert any("decoded earlier" in line for line in lines[-3:])  # the other source's cache was kept


def test_a_streamed_source_edited_leaves_one_entry(tmp_path, monkeypatch):
    src, cache = _folder(tmp_path / "photos", n=8, size=(30, 20)), tmp_path / "cache"
    monkeypatch.setenv("ENGINE_MEMORY_LIMIT", "3000")  # streamed: decoded into NAME.stream/
    imagefolder.read(src, cache, log=lambda s: None)
    assert [p.endswith(".stream") for p in _entries(cache)] == [True]
    os.remove(src / "dog" / "0.png")
    imagefolder.read(src, cache, log=lambda s: None)
    entries = _entries(cache)
    assert len(entries) == 1 and entries[0].endswith(".stream")


def test_the_entry_made_through_a_link_goes_too(tmp_path):
    src, cache = _folder(tmp_path / "photos"), tmp_path / "cache"
    (tmp_path / "album").symlink_to(src)
    imagefolder.read(tmp_path / "album", cache, log=lambda s: None)  # album-KEY.pt, the same images
    imagefolder.read(src, cache, log=lambda s: None)
    assert len(list(cache.glob("*.pt"))) == 2
    Image.new("RGB", (12, 10), (1, 2, 3)).save(src / "dog" / "new.png")
    imagefolder.read(src, cache, log=lambda s: None)
    assert [p.name.startswith("photos-") for p in cache.glob("*.pt")] == [True]
