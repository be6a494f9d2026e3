"""Own image folders whose folders cannot all be read: a folder os.walk cannot list (a path longer
than the system takes; as root, permissions cannot show it) is one line in training's decode and in
`engine predict FOLDER`, not a folder left out with its images without a word."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from engine.data.imagefolder import read
from engine.errors import EngineError
from export.images import images_under


def png(seed):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def flat(root, classes=("a", "b"), per_class=4):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            (root / name / f"{k}.png").write_bytes(png(10 * c + k))
    return root


def too_deep(folder, name="deep.png"):
    """An image in a folder whose path is longer than PATH_MAX (made by descriptor, as no path reaches it)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(20):  # 20 x 251 characters: past Linux's 4,096
            os.mkdir("d" * 250, dir_fd=fd)
            inner = os.open("d" * 250, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        image = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(image, png(99))
        os.close(image)
    finally:
        os.close(fd)


def test_a_folder_too_deep_to_list_is_one_line_not_images_left_out(tmp_path):
    data = flat(tmp_path / "photos")
    too_deep(data / "b")
    with pytest.raises(EngineError, match=r"^cannot read the folder \S*/photos/b/d{250}/\S* \(File name too long\), so "
                                          r"its images would be left out"):
        read(data, tmp_path / "cache", log=lambda *_: None, test_split="25%")
    with pytest.raises(EngineError, match=r"^cannot read the folder \S*/photos/b/d{250}/\S* \(File name too long\)"):
        images_under(data)


def test_a_broken_link_that_names_no_image_is_said_not_left_out_without_a_word(tmp_path):
    """photos/dog -> a drive not mounted: a whole class missing is named in the 'Not used:' line, by a
    cold decode, from the decode cache, and by engine predict FOLDER."""
    data = flat(tmp_path / "photos")
    (data / "dog").symlink_to(tmp_path / "usb" / "dog")
    for _ in ("decoded", "from the cache"):
        said = []
        dataset = read(data, tmp_path / "cache", log=said.append, test_split="25%")
        assert dataset.classes == ["a", "b"]
        assert f"Not used: 1 file of {data} that is not an image file this engine reads (broken link 1)" in said
    others = {}
    assert len(images_under(data, others)) == 8 and others == {"broken link": 1}
