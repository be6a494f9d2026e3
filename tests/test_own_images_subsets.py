"""A --limit-train subset of own images is a random draw, not a stratified one: where it leaves a class
with no training image, one line says so (the run trains, as a quick run may; it used to without a word)."""

import io

import numpy as np
from PIL import Image

from engine.config import Config
from engine.data import load_dataset


def photos(root, classes=("a", "b", "c"), per_class=4):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            buffer = io.BytesIO()
            Image.fromarray(np.random.default_rng(10 * c + k).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, "PNG")
            (root / name / f"{k}.png").write_bytes(buffer.getvalue())
    return root


def test_a_limit_train_that_leaves_a_class_untrained_is_said(tmp_path):
    data = photos(tmp_path / "photos")
    config = dict(data=str(data), cache_dir=str(tmp_path / "cache"), test_split="25%")
    said = []
    subset = load_dataset(Config(**config, limit_train=2), said.append)
    untrained = [name for i, name in enumerate(subset.classes) if i not in subset.train_y.tolist()]
    assert len(subset.train_y) == 2 and untrained
    assert (f"Note: --limit-train 2 leaves {len(untrained)} of the 3 classes with no training images "
            f"({', '.join(untrained)}): the model cannot learn {'it' if len(untrained) == 1 else 'them'}") in said
    said.clear()
    load_dataset(Config(**config, limit_train=8), said.append)  # every class drawn: nothing said
    assert not any("no training images" in line for line in said)
