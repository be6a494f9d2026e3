"""A caller's own PIL image given to the inference API (export.images.batch, behind Classifier.logits and
predict) is left as it was: a large JPEG not yet loaded was decoded in place at 1/8 by PIL's draft mode,
so the caller's 1000x600 photo became 125x75 after a prediction. Its pixels are still those of its path."""

import numpy as np
import pytest
from PIL import Image

from engine.errors import EngineError
from export.images import batch


def test_a_callers_unloaded_jpeg_keeps_its_size_and_gives_its_paths_pixels(tmp_path):
    rng = np.random.default_rng(0)
    for name, orientation in (("plain.jpg", None), ("turned.jpg", 6)):
        image = Image.fromarray(rng.integers(0, 256, (300, 500, 3), dtype=np.uint8))
        exif = image.getexif()
        if orientation:
            exif[0x0112] = orientation
        image.save(tmp_path / name, exif=exif)
        for rule in ("stretch", "crop"):
            given = Image.open(tmp_path / name)
            pixels = batch([given], (3, 24, 40), rule)
            assert given.size == (500, 300) and given.mode == "RGB"
            assert np.array_equal(pixels, batch([tmp_path / name], (3, 24, 40), rule))
            assert np.array_equal(batch([given], (3, 24, 40), rule), pixels)  # again: the same
            assert np.array_equal(np.asarray(given), np.asarray(Image.open(tmp_path / name)))  # still decodes whole


def test_a_pil_image_closed_before_its_pixels_were_read_is_one_line(tmp_path):
    Image.fromarray(np.zeros((30, 50, 3), np.uint8)).save(tmp_path / "a.jpg")
    with Image.open(tmp_path / "a.jpg") as closed:  # PIL's load then failed on a bare AssertionError
        pass
    with pytest.raises(EngineError, match="closed before its pixels were read"):
        batch([closed], (3, 24, 40))
    with open(tmp_path / "a.jpg", "rb") as f:
        file_closed = Image.open(f)
    with pytest.raises(EngineError, match="cannot decode image"):
        batch([file_closed], (3, 24, 40))
