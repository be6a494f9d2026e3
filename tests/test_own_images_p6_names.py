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
