"""Hidden folders are skipped, yet the walk followed links in and out of them: a `.root -> /` beside the
class folders walked the whole filesystem (a run never started), and a class folder's link to / was
taken for a tree, its first loop deep inside (`cat/all/bin/X11 ...`) named instead of the link itself."""

import os

import numpy as np
import pytest
from PIL import Image

from engine.data import imagefolder
from engine.data.sources import walk
from engine.errors import EngineError


def photos(root):
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((6, 6, 3), 30 * i + (cls == "dog") * 120, np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_no_link_is_followed_into_or_out_of_a_hidden_folder(tmp_path):
    outside = tmp_path / "elsewhere" / "deep"
    outside.mkdir(parents=True)
    (outside / "x.png").write_bytes(b"")
    root = photos(tmp_path / "usb")
    (root / ".root").symlink_to(tmp_path / "elsewhere")  # as a .root -> / would be
    (root / ".cache" / "sub").mkdir(parents=True)
    (root / ".cache" / "sub" / "out").symlink_to(tmp_path / "elsewhere")
    walked = [os.path.relpath(r, root) for r, _, _ in walk(root)]
    assert not [r for r in walked if "elsewhere" in r or r.startswith(".root") or "/out" in r], walked
    assert ".cache/sub" in walked  # the real hidden folders are still walked (all-hidden sets are said so)
    data = imagefolder.read(root, tmp_path / "cache", test_split="25%", log=lambda *_: None)
    assert len(data.train_x) + len(data.test_x) == 8


def test_a_class_folders_link_to_the_filesystem_root_is_a_loop(tmp_path):
    root = photos(tmp_path / "usb")
    (root / "cat" / "all").symlink_to("/")
    with pytest.raises(EngineError, match=r"usb/cat/all is a link to /, a folder it is inside \(a loop\)"):
        imagefolder.read(root, tmp_path / "cache", test_split="25%", log=lambda *_: None)


def test_predicts_folder_walk_takes_no_link_above_the_folder(tmp_path):
    from export.images import images_under

    root = photos(tmp_path / "usb")
    (tmp_path / "beside").mkdir()
    Image.new("RGB", (6, 6)).save(tmp_path / "beside" / "not_given.png")
    (root / "cat" / "up").symlink_to(tmp_path)  # above the folder: every folder beside it (as a link to / would)
    (root / "dog" / "back").symlink_to(root)  # back to the folder itself: each folder once, as before
    found = [p.relative_to(root).as_posix() for p in images_under(root)]
    assert found == [f"{c}/{i}.png" for c in ("cat", "dog") for i in range(4)]
