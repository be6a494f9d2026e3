"""engine predict's IMAGE arguments: a pattern no shell expanded ('photos/*.jpg' quoted, or typed in
Windows' cmd, which expands none) was 'no such file or directory'; it is expanded as a shell would."""

import numpy as np
import pytest
from PIL import Image

from engine.errors import EngineError
from export.images import expand


def test_a_quoted_pattern_is_expanded_and_one_matching_nothing_is_one_line(tmp_path):
    for name in ("a/1.png", "a/2.JPG", "a/notes.txt", "b/c/3.png", "b/.hidden.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("txt"):
            (tmp_path / name).write_text("not an image")
        else:
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / name, "PNG")
    assert expand([str(tmp_path / "a" / "*.png")]) == [tmp_path / "a" / "1.png"]
    assert expand([str(tmp_path / "**" / "*.png")]) == [tmp_path / "a" / "1.png", tmp_path / "b" / "c" / "3.png"]
    assert expand([str(tmp_path / "?")]) == [tmp_path / "a" / "1.png", tmp_path / "a" / "2.JPG",
                                            tmp_path / "b" / "c" / "3.png"]  # folders matched: their images
    (tmp_path / "a" / "*.png").write_bytes(b"")  # a file so named is that file, not a pattern
    assert expand([str(tmp_path / "a" / "*.png")]) == [tmp_path / "a" / "*.png"]
    with pytest.raises(EngineError, match=r"nope/\*\.png: no file matches this pattern"):
        expand([str(tmp_path / "nope" / "*.png")])
