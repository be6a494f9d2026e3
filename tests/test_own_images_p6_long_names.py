"""A folder of photos with a long name (80 Chinese characters are 240 bytes; a system takes 255 a name):
every run named after it (runs/MODEL-NAME-STAMP) failed, 'File name too long', and its decode cache
(NAME-KEY.pt) could not be written, so every start decoded the set again."""

import numpy as np
from PIL import Image

from engine.data import imagefolder
from engine.data.dataset import file_label
from engine.report import default_run_dir

LONG = "夏季旅行照片的" * 11 + "照片夏"  # 80 characters, 240 bytes in UTF-8


def test_a_long_label_is_cut_to_whole_characters_within_the_limit():
    assert file_label("photos") == "photos"
    cut = file_label(LONG)
    assert LONG.startswith(cut) and len(cut.encode()) <= 100 and len(cut) == 33
    assert file_label("a\udcff" * 80, 10) == "a\udcff" * 5  # a name in no UTF-8: one byte each


def test_a_folder_with_a_long_name_is_cached_and_its_run_folder_can_be_made(tmp_path):
    photos = tmp_path / LONG
    for cls in ("cat", "dog"):
        (photos / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((6, 6, 3), 30 * i + (cls == "dog") * 120, np.uint8)).save(photos / cls / f"{i}.png")
    for _ in range(2):
        said = []
        imagefolder.read(str(photos), tmp_path / "cache", log=said.append, test_split="25%")
    assert any("decoded earlier" in line for line in said), said
    run = default_run_dir("torchvision:resnet18", LONG, root=tmp_path / "runs")
    run.mkdir(parents=True)
    assert len(run.name.encode()) < 255 and LONG[:10] in run.name
