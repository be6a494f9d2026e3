"""Image and folder names a user's photos may carry, in the one line an error is."""

import numpy as np
import pytest
from PIL import Image

from engine.cli import main
from engine.errors import one_line


def _class_folders(root, bad_name):
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / cls / f"{i}.png")
    (root / "cat" / bad_name).write_bytes(b"not an image")


def test_an_image_whose_name_holds_a_newline_is_named_on_one_line(tmp_path, capfd):
    """A file name may hold a newline or a tab (made by a script, a download): the error naming it
    was printed as two lines, breaking the one-line contract a caller greps for."""
    _class_folders(tmp_path / "photos", "bad\nname\t1.png")
    code = main(["train", "--data", str(tmp_path / "photos"), "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(tmp_path / "run"), "--model", "mlp", "--epochs", "1", "--device", "cpu"])
    err = capfd.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("engine: error: cannot decode image"), err
    assert "bad\\nname\\t1.png" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, shown", [("a\nb", "a\\nb"), ("tab\there", "tab\\there"), ("café 猫", "café 猫"),
                                         ("bell\x07", "bell\\x07")])
def test_one_line_escapes_control_characters_and_keeps_the_rest(text, shown):
    assert one_line(text) == shown


def test_the_decode_caches_warning_names_a_cache_path_with_a_newline_on_one_line(tmp_path, capfd):
    from engine.data import imagefolder

    photos = tmp_path / "photos"
    _class_folders(photos, "x.txt")
    blocked = tmp_path / "cache\nhere"
    blocked.write_text("a file where the cache folder would be")
    data = imagefolder.read(str(photos), blocked / "inner", log=lambda line: None, test_split="50%")
    assert data.classes == ["cat", "dog"]
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("engine: warning: could not write the decode cache"), lines
    assert "cache\\nhere" in lines[0]


def test_predicts_note_on_a_folder_with_a_newline_in_its_name_is_one_line(tmp_path, capfd):
    from export.predict import predict_files

    folder = tmp_path / "new\nphotos"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
    (folder / "notes.txt").write_text("x")

    class Model:  # predict_files asks the model only for its input size and predictions
        class info:
            input_size = (3, 8, 8)

        @staticmethod
        def predict(sources, topk):
            return [[("cat", 1.0)] for _ in sources]

    said = []
    assert predict_files(Model, [str(folder)], say=said.append, warn=said.append) == 0
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Not used: 1 file of") and "new\\nphotos" in lines[0], lines
