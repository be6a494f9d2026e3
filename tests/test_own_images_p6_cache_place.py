"""Where the decode cache may lie relative to the image folder it caches, and what changes its key."""

import numpy as np
import pytest
from PIL import Image

from engine.data import imagefolder
from engine.errors import UsageError


def _photos(root):
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((6, 6, 3), 30 * i + (cls == "dog") * 120, np.uint8)).save(root / cls / f"{i}.png")
    return root


def _read(photos, cache):
    lines = []
    data = imagefolder.read(str(photos), cache, log=lines.append, test_split="25%")
    return data, lines


@pytest.mark.parametrize("inside", ["cache", ".", "cat/cache"])
def test_a_cache_folder_inside_the_image_folder_is_refused_before_anything_is_written(tmp_path, inside):
    """`--cache-dir photos/cache` trained once and then refused every later run: its folder read as a
    class folder with no images ('class folder cache has no images'), a folder the user never made."""
    photos = _photos(tmp_path / "photos")
    before = sorted(p.relative_to(photos) for p in photos.rglob("*"))
    with pytest.raises(UsageError, match="decode cache .* the image folder .* that --data reads"):
        _read(photos, photos / inside)
    assert sorted(p.relative_to(photos) for p in photos.rglob("*")) == before  # nothing written in it


def test_a_hidden_cache_folder_inside_is_read_again_and_a_hidden_folder_does_not_change_the_key(tmp_path):
    """A hidden folder (photos/.cache, a .git/ beside the classes, cat/.thumbnails/) is never read: the
    cache made in it is found by the next start, and a .git/ that gains folders at each commit, or a
    thumbnail written in a hidden folder, does not decode the set again."""
    photos = _photos(tmp_path / "photos")
    first, lines = _read(photos, photos / ".cache")
    assert any(line.startswith("Decoding") for line in lines)
    (photos / ".git" / "objects" / "ab").mkdir(parents=True)
    (photos / "cat" / ".thumbnails").mkdir()  # a file manager's thumbnails, images in a hidden folder
    Image.new("RGB", (3, 3)).save(photos / "cat" / ".thumbnails" / "0.png")
    second, lines = _read(photos, photos / ".cache")
    assert any("decoded earlier" in line for line in lines) and not any(line.startswith("Decoding") for line in lines)
    assert first.classes == second.classes == ["cat", "dog"]
    assert np.array_equal(first.train_x.numpy(), second.train_x.numpy())
