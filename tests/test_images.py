"""export.images: preprocessing from the metadata alone, for every common image mode, size and source."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from engine.errors import EngineError, UsageError
from export.images import MAX_PIXELS, batch, expand, open_image

RGB = [3, 32, 32]
GRAY = [1, 28, 28]


def pixels(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def huge_png(path, width=20000, height=20000):
    """A PNG whose header claims width x height (decoding it would need 1.2 GB); only the header is real."""
    Image.fromarray(pixels((2, 2, 3))).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes of header
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))
    return path


def test_rgb_at_the_input_size_is_scaled_exactly(tmp_path):
    array = pixels((32, 32, 3))
    Image.fromarray(array).save(tmp_path / "a.png")
    got = batch([tmp_path / "a.png"], RGB)
    assert got.shape == (1, 3, 32, 32) and got.dtype == np.float32
    np.testing.assert_array_equal(got[0], array.transpose(2, 0, 1).astype(np.float32) / 255)


def test_gray_rgba_palette_and_other_sizes_become_the_models_input(tmp_path):
    gray = pixels((32, 32))
    Image.fromarray(gray).save(tmp_path / "gray.png")
    got = batch(tmp_path / "gray.png", RGB)[0]
    for channel in got:  # gray into an RGB model: the value replicated, as PIL converts it
        np.testing.assert_array_equal(channel, gray / np.float32(255))
    rgba = pixels((32, 32, 4))
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(batch(tmp_path / "rgba.png", RGB)[0], rgba[..., :3].transpose(2, 0, 1) / np.float32(255))
    Image.fromarray(pixels((32, 32, 3))).convert("P").save(tmp_path / "palette.gif")
    Image.fromarray(pixels((45, 61, 3))).save(tmp_path / "big.jpg")
    out = batch([tmp_path / "palette.gif", tmp_path / "big.jpg"], RGB)
    assert out.shape == (2, 3, 32, 32) and 0 <= out.min() and out.max() <= 1
    expected = np.asarray(Image.open(tmp_path / "big.jpg").convert("RGB").resize((32, 32), Image.BICUBIC))  # stretched
    np.testing.assert_array_equal(out[1], expected.transpose(2, 0, 1) / np.float32(255))
    # crop (--resize crop): 45 high x 61 wide -> the shorter side to 32 (61 -> 43 wide), then the centre 32 columns
    cropped = batch(tmp_path / "big.jpg", RGB, rule="crop")[0]
    expected = np.asarray(Image.open(tmp_path / "big.jpg").convert("RGB").resize((43, 32), Image.BICUBIC))[:, 5:37]
    np.testing.assert_array_equal(cropped, expected.transpose(2, 0, 1) / np.float32(255))
    assert batch(tmp_path / "rgba.png", GRAY).shape == (1, 1, 28, 28)  # colour into a gray model


def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 32 * 32).astype(np.uint16).reshape(32, 32)
    Image.fromarray(values).save(tmp_path / "deep.png")
    got = batch(tmp_path / "deep.png", [1, 32, 32])[0, 0]
    np.testing.assert_allclose(got, values / 65535, atol=1 / 255)  # convert("L") would make 99% of them 1.0
    assert (got == 1.0).mean() < 0.01


def test_pil_images_and_uint8_arrays_of_every_layout():
    one = pixels((32, 32, 3))
    assert batch(Image.fromarray(one), RGB).shape == (1, 3, 32, 32)
    assert batch(one, RGB).shape == (1, 3, 32, 32)
    assert batch(pixels((5, 32, 32, 3)), RGB).shape == (5, 3, 32, 32)
    assert batch(pixels((4, 28, 28)), GRAY).shape == (4, 1, 28, 28)
    np.testing.assert_array_equal(batch([one, Image.fromarray(one)], RGB)[0], batch(one, RGB)[0])
    with pytest.raises(UsageError, match="uint8"):
        batch(one.astype(np.float32), RGB)
    with pytest.raises(UsageError, match="cannot read an image"):
        batch([42], RGB)


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"this is text, not an image", "not a readable image"),
    (None, "no such file"),
])
def test_bad_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "x.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(EngineError, match=message):
        open_image(path)


def test_a_truncated_image_fails_when_decoded_naming_the_file(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(pixels((64, 64, 3))).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(EngineError, match="cut.png"):
        batch(path, RGB)


def test_a_huge_image_is_refused_by_its_header_before_decoding(tmp_path):
    path = huge_png(tmp_path / "huge.png")
    with pytest.raises(EngineError, match="20000x20000 pixels, too large"):
        open_image(path)
    assert 20000 * 20000 > MAX_PIXELS


def test_a_directory_means_every_image_in_it(tmp_path):
    for name in ("b.png", "a.jpg", "sub/c.bmp", ".hidden/d.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(pixels((8, 8, 3))).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    said = []
    assert [p.relative_to(tmp_path).as_posix() for p in expand([tmp_path], said.append)] == ["a.jpg", "b.png", "sub/c.bmp"]
    assert said == [f"Not used: 1 file of {tmp_path} that is not an image file this engine reads (.txt 1)"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineError, match="no image files"):
        expand([tmp_path / "empty"])


def test_a_jpeg_too_large_to_decode_whole_is_taken_where_its_draft_decode_fits(tmp_path):
    """A 60-megapixel JPEG (a phone's 108 MP ones are larger still) fitted to 32x32 decodes at 1/8 scale:
    taken, at the size PIL's draft mode really decodes it at; decoded whole (no size) it is refused."""
    from engine.pixels import check_size, draft_size, fit

    path = tmp_path / "phone.jpg"
    Image.new("RGB", (9001, 6667), (90, 140, 200)).save(path, quality=50)
    with Image.open(path) as image:
        assert image.width * image.height > MAX_PIXELS
        with pytest.raises(EngineError, match=r"9001x6667 pixels, too large to decode safely"):
            check_size(image, path)
        with pytest.raises(EngineError, match=r"9001x6667 pixels, too large to decode safely"):
            check_size(image, path, (4000, 6000))  # over half its size: decoded whole
        assert draft_size(image, (3000, 2000)) == (4501, 3334)  # at 1/2: 15 megapixels, taken
        check_size(image, path, (3000, 2000))
        check_size(image, path, (32, 32))
        planned = draft_size(image, (32, 32))
        request = (max(1, round(9001 * 32 / 6667)), 32)
        image.draft("RGB", request)  # what fit asks for: PIL's own choice of scale
        assert image.size == planned == (1126, 834)
    assert batch(path, (3, 32, 32)).shape == (1, 3, 32, 32)
    with Image.open(path) as image:
        assert fit(image, (32, 32), "RGB").size == (32, 32)


def test_a_draft_decode_still_too_large_names_the_size_it_would_decode_at(tmp_path):
    from engine.pixels import check_size

    path = tmp_path / "bomb.jpg"
    Image.new("RGB", (16, 16)).save(path)
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")  # baseline frame header: length (2), precision (1), height (2), width (2)
    data[sof + 5:sof + 9] = (30000).to_bytes(2, "big") + (30000).to_bytes(2, "big")
    path.write_bytes(bytes(data))  # a header claiming 900 megapixels: only the header is ever read here
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # as the engine opens headers: its check names the size
    try:
        with Image.open(path) as image:
            assert image.size == (30000, 30000)
            with pytest.raises(EngineError, match=r"30000x30000 pixels \(decoded at 15000x15000\), too large"):
                check_size(image, path, (8000, 8000))
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    with pytest.raises(EngineError, match="30000x30000 pixels, too large"):
        open_image(path)


def test_an_array_that_could_be_channels_first_is_refused_not_guessed():
    chw = pixels((3, 32, 32))  # PyTorch's layout of one image, or three 3x32 gray images?
    with pytest.raises(UsageError, match=r"shape \(3, 32, 32\) could be one image channels first or 3 gray images"):
        batch(chw, RGB)
    assert batch(chw.transpose(1, 2, 0), RGB).shape == (1, 3, 32, 32)
    assert batch([chw[0], chw[1]], RGB).shape == (2, 3, 32, 32)  # gray images as a list of (H, W)
    assert batch(pixels((5, 32, 32)), RGB).shape == (5, 3, 32, 32)  # N x H x W: not a channel count
    assert batch(pixels((3, 28, 28)), GRAY).shape == (3, 1, 28, 28)  # for a gray model: gray images


def test_a_long_strip_is_cropped_without_scaling_all_of_it(tmp_path):
    """--resize crop of a 200000x1 strip (663 bytes as a PNG) to 64x64 scaled the whole strip to cover
    it first: 12.8 million x 64 pixels, 4 GB (30 GB at 224). Only the part the crop keeps is scaled
    now; the pixels are the same as the cover-then-crop's (bicubic, within one level)."""
    import subprocess
    import sys

    code = ("import re, numpy as np; from PIL import Image; from engine.pixels import fit\n"  # a fresh process: its peak alone
            "a = np.zeros((1, 200000, 3), np.uint8); a[0, :100000] = 200; a[0, 100000:] = 50\n"
            "out = np.asarray(fit(Image.fromarray(a), (64, 64), 'RGB', 'crop'))\n"
            "peak = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
            "print(out.shape, out.min(), out.max(), peak)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    shape, low, high, rss_kb = done.stdout.rsplit(")", 1)[0] + ")", *map(int, done.stdout.rsplit(")", 1)[1].split())
    assert shape == "(64, 64, 3)" and 50 <= low <= high <= 200
    assert rss_kb < 500_000  # the whole strip covered: about 4,000,000 kB (the part alone: 31,000)

    from engine import pixels as module

    photo = Image.fromarray(pixels((300, 500, 3)))
    whole = np.asarray(module.fit(photo, (64, 64), "RGB", "crop")).astype(int)
    limit, module.MAX_PIXELS = module.MAX_PIXELS, 10  # the part-scaling path for an ordinary photo
    try:
        part = np.asarray(module.fit(photo, (64, 64), "RGB", "crop")).astype(int)
    finally:
        module.MAX_PIXELS = limit
    assert np.abs(whole - part).max() <= 1


def test_a_jpeg_of_exactly_twice_the_size_decodes_at_half_scale(tmp_path):
    import io as bytes_io

    from engine.pixels import draft_request, draft_size

    buffer = bytes_io.BytesIO()
    Image.fromarray(pixels((64, 96, 3))).save(buffer, format="JPEG")
    with Image.open(buffer) as image:
        assert draft_request(image, (32, 48)) == (48, 32) and draft_size(image, (32, 48)) == (48, 32)
        assert draft_request(image, (33, 48)) is None  # less than twice: whole


STORED = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
          5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_270}  # how a camera stores an upright picture for each EXIF orientation


def stored_as(upright, turn, path, **kwargs):
    """`upright` (a PIL image) saved as a camera stores it under EXIF orientation `turn`."""
    exif = Image.Exif()
    exif[0x0112] = turn
    (upright.transpose(STORED[turn]) if STORED[turn] is not None else upright).save(path, exif=exif.tobytes(), **kwargs)
    return path


@pytest.mark.parametrize("kind", ["png", "tiff"])  # a recent PIL turns a TIFF itself: never twice
@pytest.mark.parametrize("turn", range(1, 9))
def test_a_photo_is_turned_upright_as_its_exif_orientation_says(tmp_path, turn, kind):
    """Predict and training's decode see a phone photo as its viewer shows it, whatever way it is stored."""
    from PIL import ImageOps

    from engine.data.imagefolder import read

    up = Image.fromarray(pixels((24, 16, 3), turn))  # 16 wide, 24 high
    path = stored_as(up, turn, tmp_path / f"photo.{kind}")
    with Image.open(path) as opened:
        assert np.array_equal(np.asarray(ImageOps.exif_transpose(opened).convert("RGB")), np.asarray(up))  # PIL's reading
    got = batch([path], [3, 24, 16])[0]
    np.testing.assert_array_equal(got, np.asarray(up).transpose(2, 0, 1).astype(np.float32) / 255)
    for split, name in (("train", "a"), ("train", "b"), ("test", "a"), ("test", "b")):  # no --image-size: one size, upright
        (tmp_path / "set" / split / name).mkdir(parents=True)
        up.save(tmp_path / "set" / split / name / "upright.png")
        stored_as(up, turn, tmp_path / "set" / split / name / f"stored.{kind}")
    data = read(tmp_path / "set", tmp_path / "cache", log=lambda *_: None)
    assert data.train_x.shape == (4, 3, 24, 16)
    assert all(np.array_equal(x.numpy(), np.asarray(up).transpose(2, 0, 1)) for x in data.train_x)


def test_a_sideways_jpeg_is_drafted_for_its_upright_size(tmp_path):
    """A large JPEG stored sideways (orientation 6), fitted to a portrait 64x48 (H x W): the draft scale is
    chosen for the upright picture, which then covers the size asked for."""
    from engine.pixels import draft_size, fit, upright_size

    up = Image.new("RGB", (1200, 1600), (200, 30, 30))  # upright: 1200 wide, 1600 high
    up.paste((30, 30, 200), (0, 0, 1200, 400))  # the top quarter blue
    path = stored_as(up, 6, tmp_path / "phone.jpg", quality=90)
    with Image.open(path) as image:
        assert image.size == (1600, 1200) and upright_size(image) == (1200, 1600)
        assert draft_size(image, (64, 48)) == (200, 150)  # 1/8: the upright 150x200 still covers 48x64
        got = np.asarray(fit(image, (64, 48), "RGB"))
    assert got.shape == (64, 48, 3)
    assert got[:12, :, 2].mean() > 150 and got[-40:, :, 0].mean() > 150  # blue at the top, red below: upright


def test_an_archive_given_to_predict_is_said_to_be_one(tmp_path):
    """engine predict reads image files and folders: a .zip of photos was 'not a readable image (cannot
    identify image file ...)', as if it were a damaged photo."""
    import zipfile

    from engine.errors import EngineError
    from export.images import open_image

    with zipfile.ZipFile(tmp_path / "Photos.ZIP", "w") as archive:
        archive.writestr("cat/1.png", b"x")
    with pytest.raises(EngineError) as error:
        open_image(tmp_path / "Photos.ZIP")
    assert str(error.value) == (f"{tmp_path / 'Photos.ZIP'} is an archive, not an image: extract it and give the folder "
                                "(engine predict reads image files and folders of them)")
