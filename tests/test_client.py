"""The README's standalone client (onnxruntime, numpy and PIL only) reproduces `engine eval` on a real folder.

The script is taken from README.md itself, so the documented client and the tested one are the same.
"""

import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.cli import main
from engine.data.synthetic import CLASSES, generate

pytestmark = pytest.mark.slow  # subprocesses or whole trainings: in CI (README's test command), not in a plain `pytest`

README = Path(__file__).resolve().parents[1] / "README.md"


def client_script():
    match = re.search(r"<!-- client.py -->\n```python\n(.*?)```", README.read_text(), re.S)
    assert match, "README.md lost its client script"
    return match.group(1)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """The synthetic set written as PNG files in an image folder, the real on-disk format."""
    root = tmp_path_factory.mktemp("folder") / "shapes"
    data = generate(seed=5, train_size=300, test_size=130)
    for split, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
        for i, (image, label) in enumerate(zip(x, y)):
            folder = root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.png")
    return root


def test_readme_client_matches_engine_eval_at_batch_1_7_and_256(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(image_folder), "--epochs", "2", "--batch-size", "32", "--no-amp",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--quiet"]) == 0
    assert main(["export", str(tmp_path / "m.onnx"), "--checkpoint", str(out / "best.pt")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "m.onnx"), "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    engine_acc = float(re.search(r"Test_acc:([\d.]+)%", capsys.readouterr().out).group(1))
    script = tmp_path / "client.py"
    script.write_text(client_script())
    for batch in (1, 7, 256):
        # -I: isolated mode (no current directory or PYTHONPATH on sys.path), as a client machine runs it
        done = subprocess.run([sys.executable, "-I", str(script), str(tmp_path / "m.onnx"), str(image_folder / "test"),
                               str(batch)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        client_acc = float(re.search(r"accuracy ([\d.]+)% on 130 images", done.stdout).group(1))
        assert abs(client_acc - engine_acc) <= 0.1, (batch, client_acc, engine_acc)
    assert 0 < engine_acc < 100 and not np.isnan(engine_acc)


def client_against_eval(root, train, tmp_path, capsys, batch=7):
    """(engine eval's accuracy, the README client's, its image count) on root/test, from a run with
    the `train` flags on `root` and its export."""
    out, cache = tmp_path / "run", str(tmp_path / "cache")
    assert main(["train", "--data", str(root), *train, "--no-amp", "--cache-dir", cache, "--out", str(out),
                 "--quiet"]) == 0
    assert main(["export", str(tmp_path / "m.onnx"), "--checkpoint", str(out / "best.pt")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "m.onnx"), "--cache-dir", cache, "--quiet"]) == 0
    engine_acc = float(re.search(r"Test_acc:([\d.]+)%", capsys.readouterr().out).group(1))
    script = tmp_path / "client.py"
    script.write_text(client_script())
    done = subprocess.run([sys.executable, "-I", str(script), str(tmp_path / "m.onnx"), str(root / "test"), str(batch)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = re.search(r"accuracy ([\d.]+)% on (\d+) images", done.stdout)
    return engine_acc, float(found.group(1)), int(found.group(2))


@pytest.mark.parametrize("resize", ["stretch", "crop"])
def test_readme_client_fits_images_of_any_size_as_training_did(tmp_path, resize, capsys):
    """Mixed-size JPEGs (big ones too, decoded in draft mode): the client's accuracy equals engine eval's."""
    root = tmp_path / "mixed"
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 30)):
        for label, name in enumerate(("dark", "light")):
            for k in range(n):
                size = (int(rng.integers(20, 400)), int(rng.integers(20, 400)))
                pixels = rng.integers(0, 120, (size[1], size[0], 3)) + 120 * label * (rng.random() < 0.8)
                (root / split / name).mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f"{k}.jpg", quality=90)
    train = ["--image-size", "16x24", "--resize", resize, "--model", "mlp", "--epochs", "1", "--batch-size", "16"]
    engine_acc, client_acc, images = client_against_eval(root, train, tmp_path, capsys)
    assert images == 60 and client_acc == engine_acc


def test_readme_client_scales_sixteen_bit_images_as_training_did(tmp_path, capsys):
    """16-bit grey PNGs whose classes differ only above 255: clipping (PIL's convert) would lose them."""
    root = tmp_path / "deep"
    rng = np.random.default_rng(1)
    for split, n in (("train", 40), ("test", 20)):
        for label, name in enumerate(("low", "high")):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for k in range(n):
                values = rng.integers(1_000, 30_000, (12, 12)) + 34_000 * label
                Image.fromarray(values.astype(np.uint16)).save(root / split / name / f"{k}.png")
    train = ["--model", "mlp", "--epochs", "2", "--batch-size", "16"]
    engine_acc, client_acc, images = client_against_eval(root, train, tmp_path, capsys, batch=8)
    assert images == 40 and client_acc == engine_acc
    assert engine_acc > 90  # the classes are apart after scaling; clipped, every pixel would be 255


def client_load(input_size, crop):
    """The README client's `load` function, for a model taking `input_size` (C, H, W)."""
    source = re.search(r"\nT = Image.Transpose.*?\ndef load\(path\):\n.*?\n    return pixels.transpose\(2, 0, 1\)[^\n]*\n",
                       client_script(), re.S)
    assert source, "README.md's client lost its load function"
    names = {"np": np, "Image": Image, "crop": crop}
    names["channels"], names["height"], names["width"] = input_size
    exec(source.group(0), names)
    return names["load"]


@pytest.mark.parametrize("input_size", [(3, 24, 20), (1, 16, 16)])
@pytest.mark.parametrize("rule", ["stretch", "crop"])
def test_readme_client_reads_every_kind_of_image_as_engine_predict_does(tmp_path, input_size, rule):
    from export.images import batch

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)
    palette = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE)
    palette.save(tmp_path / "palette_bytes.png", transparency=bytes([0, 128, 255] + [255] * 253))  # pngquant's kind
    Image.fromarray(rng.random((30, 41)).astype(np.float32), "F").save(tmp_path / "float01.tiff")
    Image.fromarray((rng.random((30, 41)) * 200).astype(np.float32), "F").save(tmp_path / "float255.tiff")
    Image.fromarray(rng.integers(0, 65536, (30, 41)).astype(np.uint16)).save(tmp_path / "sixteen.png")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=90)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    for turn, name in ((6, "sideways.jpg"), (8, "sideways.png"), (3, "upside_down.tiff"), (5, "transposed.webp")):
        exif = Image.Exif()
        exif[0x0112] = turn  # a camera's orientation tag: both readers turn the photo upright
        Image.fromarray(rgb).save(tmp_path / name, exif=exif.tobytes())
    big = Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).resize((400, 300))
    exif = Image.Exif()
    exif[0x0112] = 6
    big.save(tmp_path / "big_sideways.jpg", exif=exif.tobytes(), quality=90)  # drafted for its upright size
    load = client_load(input_size, rule == "crop")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither reader may print PIL's palette-transparency warning
        for path in sorted(tmp_path.iterdir()):
            engine = batch([path], input_size, rule)[0]
            client = load(path)
            assert client.shape == engine.shape and np.array_equal(client, engine), path.name
