"""32-bit integer TIFFs (PIL's mode I from I;32N or I;32S) were read as 16-bit ones and clipped at 65535:
any value above it white. They are scaled from the full range of their 32 bits, as 16-bit ones are."""

import struct

import numpy as np
from PIL import Image

from engine.pixels import fit


def tiff32(path, values, sample_format):
    """An uncompressed one-strip TIFF of 32-bit samples, unsigned (SampleFormat 1) or signed (2)."""
    height, width = values.shape
    data = values.astype("<u4" if sample_format == 1 else "<i4").tobytes()
    tags = [(256, 3, width), (257, 3, height), (258, 3, 32), (259, 3, 1), (262, 3, 1), (273, 4, 0), (277, 3, 1),
            (278, 3, height), (279, 4, len(data)), (339, 3, sample_format)]
    start = 8 + 2 + 12 * len(tags) + 4
    out = b"II*\x00" + struct.pack("<IH", 8, len(tags))
    for tag, kind, value in tags:
        value = start if tag == 273 else value
        out += struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3
                                                    else struct.pack("<I", value))
    path.write_bytes(out + struct.pack("<I", 0) + data)
    return path


def read(path):
    with Image.open(path) as image:
        assert image.mode == "I"
        return np.asarray(fit(image, None, "L")).tolist()


def test_unsigned_32_bit_tiff_is_scaled_over_its_range(tmp_path):
    values = np.array([[0, 65535, 2**31, 3 * 2**30, 2**32 - 1]], dtype=np.uint64)
    assert read(tiff32(tmp_path / "u32.tif", values, 1)) == [[0, 0, 128, 191, 255]]  # was [[0, 255, 0, 0, 0]]


def test_signed_32_bit_tiff_is_scaled_from_its_minimum(tmp_path):
    values = np.array([[-(2**31), -(2**30), 0, 70000, 2**31 - 1]], dtype=np.int64)
    assert read(tiff32(tmp_path / "s32.tif", values, 2)) == [[0, 64, 128, 128, 255]]  # was [[0, 0, 0, 255, 255]]


def test_pil_written_mode_i_tiff_reads_as_a_signed_32_bit_one(tmp_path):
    Image.fromarray(np.array([[0, 70000, 2**31 - 1]], dtype=np.int32)).save(tmp_path / "i.tif")
    assert read(tmp_path / "i.tif") == [[128, 128, 255]]  # PIL saves mode I signed; 70000 was clipped to white


def test_readme_client_reads_32_bit_tiffs_as_the_engine_does(tmp_path):
    from tests.test_own_images_p8_modes import readme_load

    unsigned = tiff32(tmp_path / "u32.tif", np.array([[0, 70000, 2**31, 3 * 2**30, 2**32 - 1]] * 2), 1)
    signed = tiff32(tmp_path / "s32.tif", np.array([[-(2**31), -5, 0, 70000, 2**31 - 1]] * 2), 2)
    for path in (unsigned, signed):
        for channels in (1, 3):
            with Image.open(path) as image:
                engine = np.asarray(fit(image, (2, 5), "L" if channels == 1 else "RGB"), dtype=np.float32) / 255
            client = readme_load(channels, 2, 5)(path)
            np.testing.assert_array_equal(client, engine.reshape(2, 5, channels).transpose(2, 0, 1))


def test_training_decode_of_a_32_bit_tiff_folder(tmp_path):
    from engine.data.imagefolder import read

    for name, value in (("dim", 2**30), ("bright", 3 * 2**30)):
        (tmp_path / "set" / name).mkdir(parents=True)
        for i in range(3):
            tiff32(tmp_path / "set" / name / f"{i}.tif", np.full((4, 4), value, dtype=np.uint64), 1)
    data = read(tmp_path / "set", tmp_path / "cache", test_split="34%", log=lambda *_: None)
    assert data.train_x.shape[1] == 1
    for name, expected in (("dim", 64), ("bright", 191)):  # both were 255 (clipped at 65535)
        assert (data.train_x[data.train_y == data.classes.index(name)] == expected).all()
