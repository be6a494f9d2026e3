"""The Data line of a set with no test split of its own said '20 train / no test split' while its
test set was held out of those images (and `engine eval` of the run scored that held-out set; with
--test-split given no line said so): it says how many images are held out as the test set."""

import numpy as np
from PIL import Image

from engine.data.imagefolder import read


def folder(root, per_class=10):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray((rng.random((4, 4, 3)) * 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def data_line(source, cache, test_split):
    lines = []
    data = read(source, cache, log=lines.append, test_split=test_split)
    return next(line for line in lines if line.startswith("Data: ")), data


def test_data_line_names_the_held_out_test_set(tmp_path):
    source = folder(tmp_path / "set")
    read(source, tmp_path / "cache", log=lambda *_: None)  # decoded once: the Data line is a cached read's
    for test_split, held in ((None, 2), ("30%", 6)):
        line, data = data_line(source, tmp_path / "cache", test_split)
        assert "train / no test split" not in line
        assert f"20 images, no test split of its own: {held} held out as the test set" in line
        assert len(data.test_x) == held


def test_data_line_of_a_whole_evaluated_set_keeps_its_words(tmp_path):
    source = folder(tmp_path / "set", per_class=3)
    read(source, tmp_path / "cache", log=lambda *_: None, test_split="all")
    line, data = data_line(source, tmp_path / "cache", "all")
    assert "(6 images, all evaluated" in line and len(data.test_x) == 6
