"""Image modes the readers met without a rule: a signed 16-bit TIFF (PIL opens it as mode I from raw
mode I;16S) was clipped at 0, losing its negative half, and a CIELab TIFF (mode LAB) read for a grey
model stopped with PIL's 'conversion from LAB to RGB not supported', as though the file were bad."""

import struct

import numpy as np
from PIL import Image

from engine.pixels import fit
from export.images import open_image, to_pixels


def signed_tiff(path, values, bits=16):
    """An uncompressed one-strip TIFF of int16 (or int8) samples (SampleFormat 2), as PIL cannot write one."""
    height, width = values.shape
    data = values.astype("<i2" if bits == 16 else "i1").tobytes()
    tags = [(256, 3, width), (257, 3, height), (258, 3, bits), (259, 3, 1), (262, 3, 1), (273, 4, 0), (277, 3, 1),
            (278, 3, height), (279, 4, len(data)), (339, 3, 2)]
    start = 8 + 2 + 12 * len(tags) + 4
    out = b"II*\x00" + struct.pack("<IH", 8, len(tags))
    for tag, kind, value in tags:
        value = start if tag == 273 else value
        out += struct.pack("<HHHH", tag, kind, 1, 0)[:8] + (struct.pack("<HH", value, 0) if kind == 3
                                                         else struct.pack("<I", value))
    path.write_bytes(out + struct.pack("<I", 0) + data)
    return path


def test_signed_16_bit_tiff_is_scaled_over_its_range_not_clipped(tmp_path):
    values = np.array([[-32768, -16384, 0, 16384, 32767]], dtype=np.int16)
    path = signed_tiff(tmp_path / "s16.tif", values)
    with Image.open(path) as image:
        assert image.mode == "I" and np.asarray(image).min() == -32768  # PIL reads it signed
        got = np.asarray(fit(image, None, "L"))
    assert got.tolist() == [[0, 64, 128, 191, 255]]  # the old reading clipped the negatives: [[0, 0, 0, 64, 255]]


def test_signed_tiff_reads_the_same_loaded_or_not(tmp_path):
    path = signed_tiff(tmp_path / "s16.tif", np.full((2, 3), -100, dtype=np.int16))
    with Image.open(path) as image:
        image.load()
        assert np.asarray(fit(image, None, "L")).tolist() == [[127] * 3] * 2  # (-100 + 32768) * 255 / 65535, rounded


def test_signed_8_bit_tiff_is_offset_not_read_as_its_bytes(tmp_path):
    path = signed_tiff(tmp_path / "s8.tif", np.array([[-128, -1, 0, 127]], dtype=np.int8), bits=8)
    with Image.open(path) as image:
        assert image.mode == "L"
        assert np.asarray(fit(image, None, "L")).tolist() == [[0, 127, 128, 255]]  # was [[128, 255, 0, 127]]


def test_unsigned_16_bit_tiff_keeps_its_reading(tmp_path):
    Image.fromarray(np.array([[0, 30000, 65535]], dtype=np.uint16)).save(tmp_path / "u16.tif")
    with Image.open(tmp_path / "u16.tif") as image:
        assert np.asarray(fit(image, None, "L")).tolist() == [[0, 117, 255]]


def lab_tiff(path):
    Image.new("LAB", (6, 4), (128, 200, 128)).save(path)  # L 50%, a* +72: a red
    return path


def test_lab_tiff_reads_for_a_grey_model_as_its_colour_does(tmp_path):
    path = lab_tiff(tmp_path / "lab.tif")
    with Image.open(path) as image:
        rgb = np.asarray(fit(image, None, "RGB"))
    assert rgb[0, 0].tolist() == [222, 34, 123]  # littlecms's Lab -> sRGB (ImageCms) gives the same
    with Image.open(path) as image:
        grey = np.asarray(fit(image, None, "L"))
    assert grey.shape == (4, 6)
    assert (grey == np.asarray(Image.fromarray(rgb).convert("L"))).all()


def test_predict_reads_a_lab_tiff_for_a_grey_model(tmp_path):
    path = lab_tiff(tmp_path / "lab.tif")
    pixels = to_pixels(open_image(path), [1, 2, 3], source=str(path))  # was: cannot decode ... (LAB to RGB)
    assert pixels.shape == (2, 3, 1)


def readme_load(channels, height, width):
    """The README client's load(), run on its own (no ONNX model): the lines from its EXIF table to IMAGES."""
    from tests.test_client import client_script

    script = client_script()
    start, end = script.index("T = Image.Transpose"), script.index("\nIMAGES = ")
    space = {"np": np, "Image": Image, "channels": channels, "height": height, "width": width, "crop": False}
    exec(script[start:end], space)
    return space["load"]


def test_readme_client_reads_signed_and_lab_tiffs_as_the_engine_does(tmp_path):
    signed = signed_tiff(tmp_path / "s16.tif", np.array([[-32768, -16384, 0, 16384, 32767]] * 2, dtype=np.int16))
    lab = lab_tiff(tmp_path / "lab.tif")
    byte = signed_tiff(tmp_path / "s8.tif", np.array([[-128, -1, 0, 64, 127]] * 2, dtype=np.int8), bits=8)
    for path, channels in ((signed, 1), (signed, 3), (lab, 1), (lab, 3), (byte, 1), (byte, 3)):
        with Image.open(path) as image:
            engine = np.asarray(fit(image, (2, 5), "L" if channels == 1 else "RGB"), dtype=np.float32) / 255
        client = readme_load(channels, 2, 5)(path)
        np.testing.assert_array_equal(client, engine.reshape(2, 5, channels).transpose(2, 0, 1))


def test_training_decode_of_a_signed_tiff_folder(tmp_path):
    from engine.data.imagefolder import read

    for name, value in (("cold", -30000), ("warm", 30000)):
        for i in range(3):
            (tmp_path / "set" / name).mkdir(parents=True, exist_ok=True)
            signed_tiff(tmp_path / "set" / name / f"{i}.tif", np.full((4, 4), value, dtype=np.int16))
    data = read(tmp_path / "set", tmp_path / "cache", test_split="34%", log=lambda *_: None)
    assert data.train_x.shape[1] == 1
    cold = data.train_x[data.train_y == data.classes.index("cold")]
    assert (cold == 11).all()  # (-30000 + 32768) * 255 / 65535; the old decode clipped it to 0, as black as -32768
