"""`engine train --out` never inside the image folder the run reads: its curves.png and
confusion.png would become images of that set (of a class, or outside every class)."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from engine.cli import main

TRAIN = ["train", "--model", "lenet", "--batch-size", "8", "--epochs", "1", "--quiet", "--save-every", "off"]


@pytest.fixture
def images(tmp_path):
    """train/ and test/ of three classes of 16x16 PNGs."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("test", 2)):
        for k, name in enumerate(("cat", "dog", "owl")):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = (rng.integers(0, 60, (16, 16, 3)) + 60 * k).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return tmp_path / "data"


def snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("where", [".", "train/cat", "test/new"])
def test_out_inside_the_data_folder_is_refused(images, tmp_path, where, capsys, monkeypatch):
    monkeypatch.setenv("ENGINE_CACHE_DIR", str(tmp_path / "cache"))
    before = snapshot(images)
    out = images / where
    code = main([*TRAIN, "--data", str(images), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and "the image folder" in err[0] and "choose an --out outside it" in err[0] and "--out" in err[0], err
    assert snapshot(images) == before  # no run file, no folder made, in the data

