"""The README's client on a test folder as a Mac or a photo library leaves it: hidden files, notes,
images in a class's subfolders. It read `test/*/*` and opened every file: a `.DS_Store` stopped it with
PIL's UnidentifiedImageError, where engine eval skips it."""

import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from engine.cli import main
from tests.test_client import client_script


@pytest.mark.slow  # a training, an export and a subprocess
def test_the_readme_client_reads_the_images_engine_eval_reads_and_skips_the_rest(tmp_path, capsys):
    photos = tmp_path / "photos"
    for split, count in (("train", 12), ("test", 4)):
        for cls in ("cat", "dog"):
            (photos / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((8, 8, 3), (cls == "dog") * 150 + 5 * i, np.uint8)).save(
                    photos / split / cls / f"{i}.png")
    cache, run, model = tmp_path / "cache", tmp_path / "run", tmp_path / "m.onnx"
    assert main(["train", "--data", str(photos), "--model", "mlp", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                 "--cache-dir", str(cache), "--out", str(run), "--quiet"]) == 0
    assert main(["export", str(model), "--checkpoint", str(run / "best.pt"), "--no-verify"]) == 0
    test = photos / "test"
    (test / ".DS_Store").write_bytes(b"\0Bud1")
    (test / "cat" / ".DS_Store").write_bytes(b"\0Bud1")
    (test / "cat" / "._0.png").write_bytes(b"\0\5\26\7 resource fork")
    (test / "dog" / "notes.txt").write_text("taken in 2019")
    (test / "dog" / "2019").mkdir()
    Image.fromarray(np.full((8, 8, 3), 160, np.uint8)).save(test / "dog" / "2019" / "a.png")
    capsys.readouterr()
    assert main(["eval", str(model), "--data", str(test), "--cache-dir", str(cache)]) == 0
    said = re.search(r"Test_acc:([\d.]+)%.*\((\d+) test images", capsys.readouterr().out)
    script = tmp_path / "client.py"
    script.write_text(client_script())
    done = subprocess.run([sys.executable, "-I", str(script), str(model), str(test), "3"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    client = re.search(r"accuracy ([\d.]+)% on (\d+) images", done.stdout)
    assert int(client.group(2)) == int(said.group(2)) == 9
    assert abs(float(client.group(1)) - float(said.group(1))) <= 0.01
