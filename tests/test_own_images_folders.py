"""Own image folders and archives that cannot all be read, said rather than read in part without a
word: a folder os.walk cannot list (a path longer than the system takes; as root, permissions
cannot show it), a broken link where a class folder was, a .tar cut short or with a damaged header."""

import io
import os
import tarfile

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


def tar_of(folder, archive):
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname=folder.name)
    with tarfile.open(archive) as tar:
        return archive.read_bytes(), tar.getmembers()


@pytest.mark.parametrize("damage", ["cut at a member's end", "cut inside a header", "a damaged header"])
def test_a_tar_cut_short_or_damaged_is_one_line_not_its_first_members_alone(tmp_path, damage):
    """tarfile stops without a word at a header it cannot read: the images before it trained alone (9 of
    10), and the decode cache kept them. GNU tar says both a damaged header and a cut inside one."""
    data, members = tar_of(flat(tmp_path / "photos", per_class=5), tmp_path / "whole.tar")
    last = members[-1]  # photos/b/4.png
    bad = tmp_path / "bad.tar"
    bad.write_bytes({"cut at a member's end": data[:last.offset],
                     "cut inside a header": data[:last.offset + 100],
                     "a damaged header": data[:last.offset] + b"x" * 512 + data[last.offset + 512:]}[damage])
    said = (r"has a damaged member header after its member photos/b/3.png \(at byte [\d,]+: .*\), where reading it "
            r"stops, so the members after it would be left out" if damage == "a damaged header" else
            r"ends after its member photos/b/3.png without the blocks that end a tar: it was cut short")
    with pytest.raises(EngineError, match=f"^{bad} {said}"):
        read(bad, tmp_path / "cache", log=lambda *_: None, test_split="20%")
    whole = read(tmp_path / "whole.tar", tmp_path / "cache", log=lambda *_: None, test_split="20%")
    assert len(whole.train_x) + len(whole.test_x) == 10


def test_a_folder_reached_twice_through_links_is_one_line_not_images_read_twice(tmp_path):
    """a/to_b -> ../b beside b/to_a -> ../a: no link leads into a folder it sits in, yet the walk went
    round until the system's limit on links (8 images read as 328, each class's also in the other);
    two class folders linked to one folder of photos put each photo in both classes."""
    loop = flat(tmp_path / "loop")
    (loop / "a" / "to_b").symlink_to("../b")
    (loop / "b" / "to_a").symlink_to("../a")
    with pytest.raises(EngineError, match=rf"^{loop}/a/to_b/to_a is the folder {loop}/a again \({loop}/a, reached "
                                          r"twice through a link\): its images would be read twice"):
        read(loop, tmp_path / "cache", log=lambda *_: None, test_split="25%")
    twice = flat(tmp_path / "twice", classes=("b",))
    flat(tmp_path / "store", classes=("cats",))
    (twice / "cat").symlink_to(tmp_path / "store" / "cats")
    (twice / "kitty").symlink_to(tmp_path / "store" / "cats")
    with pytest.raises(EngineError, match=rf"^{twice}/kitty is the folder {twice}/cat again"):
        read(twice, tmp_path / "cache", log=lambda *_: None, test_split="25%")
    (twice / "kitty").unlink()  # a hidden folder reached again is never read: not refused
    (twice / ".thumbnails").symlink_to(tmp_path / "store" / "cats")
    dataset = read(twice, tmp_path / "cache", log=lambda *_: None, test_split="25%")
    assert dataset.classes == ["b", "cat"] and len(dataset.train_x) + len(dataset.test_x) == 8
