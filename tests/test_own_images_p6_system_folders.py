"""Folders a system keeps beside a user's photos: a Synology NAS writes @eaDir/<photo>/SYNOPHOTO_THUMB_*.jpg
in every folder it indexes, which were read as images of the class (each photo again at five sizes, a
test photo's thumbnails trained on); a drive's top folder holds $RECYCLE.BIN/, System Volume Information/
or lost+found/, which were read as empty class folders and refused the set."""

import numpy as np
from PIL import Image

from engine.data import imagefolder
from export.images import images_under


def _photos(root):
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((6, 6, 3), 30 * i + (cls == "dog") * 120, np.uint8)).save(root / cls / f"IMG_{i}.JPG")
            thumbs = root / cls / "@eaDir" / f"IMG_{i}.JPG"
            thumbs.mkdir(parents=True)
            for size in ("S", "M", "XL"):
                Image.fromarray(np.full((6, 6, 3), 250, np.uint8)).save(thumbs / f"SYNOPHOTO_THUMB_{size}.jpg")
    (root / "@eaDir").mkdir()
    for name in ("$RECYCLE.BIN", "System Volume Information", "lost+found"):
        (root / name).mkdir()
    return root


def test_a_nas_thumbnail_folder_and_a_drives_system_folders_are_skipped(tmp_path):
    photos = _photos(tmp_path / "photos")
    data = imagefolder.read(str(photos), tmp_path / "cache", log=lambda line: None, test_split="25%")
    assert data.classes == ["cat", "dog"]
    assert len(data.train_x) + len(data.test_x) == 8  # the photos, not their 24 thumbnails
    assert not (data.train_x == 250).all(dim=(1, 2, 3)).any() and not (data.test_x == 250).all(dim=(1, 2, 3)).any()


def test_engine_predict_of_the_folder_skips_the_thumbnails_as_training_does(tmp_path):
    photos = _photos(tmp_path / "photos")
    assert [p.relative_to(photos).as_posix() for p in images_under(photos)] == [
        f"{cls}/IMG_{i}.JPG" for cls in ("cat", "dog") for i in range(4)]
