"""A hidden folder is never read, so what is in it cannot stop a run: a shared drive's .Trash-1001/ that
this user may not list (here: too deep to list, the same OSError), a broken link or a link loop in it,
and lost+found/, were each one line refusing the whole set."""

import os

import numpy as np
from PIL import Image

from engine.data import imagefolder
from tests.test_own_images_folders import too_deep


def _photos(root):
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((6, 6, 3), 30 * i + (cls == "dog") * 120, np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_what_a_hidden_folder_holds_does_not_stop_the_set_being_read(tmp_path):
    photos = _photos(tmp_path / "usb")
    trash = photos / ".Trash-1001" / "files"
    trash.mkdir(parents=True)
    too_deep(trash)  # os.walk cannot list it, as it cannot list another user's folder
    (trash / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")  # a broken link to an image
    (trash / "loop").symlink_to(trash)  # a link to a folder it is inside
    (photos / "cat" / ".thumbs").mkdir()
    (photos / "cat" / ".thumbs" / "old.png").symlink_to(tmp_path / "missing.png")
    os.mkfifo(photos / "cat" / ".thumbs" / "pipe.png")  # reading it would never end: it is not read
    data = imagefolder.read(str(photos), tmp_path / "cache", log=lambda line: None, test_split="25%")
    assert data.classes == ["cat", "dog"] and len(data.train_x) + len(data.test_x) == 8
