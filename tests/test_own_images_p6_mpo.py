"""An MPO, a JPEG holding more pictures (what phones write for Ultra HDR and depth photos, under .jpg),
which PIL opens as format "MPO": it was decoded at full size where the same JPEG is drafted at 1/2-1/8,
so a large phone photo was refused as too large, and its pixels were not a JPEG's."""

import io

import numpy as np
from PIL import Image

from engine.data.decode import decode as _decode
from engine.pixels import check_size, draft_size, fit
from export.images import batch


def _photo(tmp_path):
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).resize((512, 384))
    image.save(tmp_path / "plain.jpg", quality=90)
    image.save(tmp_path / "phone.jpg", format="MPO", save_all=True, append_images=[image.resize((128, 96))], quality=90)
    return tmp_path / "plain.jpg", tmp_path / "phone.jpg"


def test_an_mpo_is_drafted_and_fitted_as_the_same_jpeg_is(tmp_path):
    plain, phone = _photo(tmp_path)
    with Image.open(plain) as jpeg, Image.open(phone) as mpo:
        assert mpo.format == "MPO" and jpeg.format == "JPEG"
        assert draft_size(mpo, (32, 32)) == draft_size(jpeg, (32, 32)) == (64, 48)  # what check_size weighs
        check_size(mpo, "phone.jpg", (32, 32))
    for rule in ("stretch", "crop"):
        with Image.open(plain) as jpeg, Image.open(phone) as mpo:
            assert np.array_equal(np.asarray(fit(mpo, (32, 32), "RGB", rule)), np.asarray(fit(jpeg, (32, 32), "RGB", rule)))
        trained = _decode(("phone.jpg", phone.read_bytes(), (24, 40), rule, None))
        served = batch(phone, (3, 24, 40), rule)[0].transpose(1, 2, 0) * 255
        assert np.array_equal(trained, served.round().astype(np.uint8))


def test_the_bytes_of_an_mpo_are_drafted_too(tmp_path):
    _, phone = _photo(tmp_path)
    with Image.open(io.BytesIO(phone.read_bytes())) as mpo:
        assert draft_size(mpo, (16, 16)) == (64, 48)
