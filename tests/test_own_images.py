"""Users' own images end to end, through the real `engine` command: a mixed-size copy of real photos
(bench/make_mixed.py, at a small scale) trains with `--image-size`; a folder with no split trains with
`--test-split`, and `engine eval` of its checkpoint evaluates exactly the held-out images; `engine
predict` on the mixed-size files agrees with `engine eval`, image by image.
"""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.checkpoint import load

pytestmark = pytest.mark.slow  # subprocesses and whole trainings: in CI (README's test command)

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("disc", "ring", "stripes")
TIMEOUT = 600


def drawing(kind, seed, size):
    """A JPEG of one of three shapes at a random place, sized (width, height): learnable at any size."""
    rng = np.random.default_rng(seed)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    cy, cx, r = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0.15, 0.3)
    d = np.hypot(yy - cy * height / max(width, height), xx - cx * width / max(width, height))
    mask = {"disc": d < r, "ring": np.abs(d - r) < 0.05, "stripes": np.sin(xx * 40 + seed) > 0.3}[kind]
    image = np.where(mask[..., None], rng.integers(150, 256, 3), rng.integers(0, 100, 3)).astype(np.uint8)
    image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def mixed_size(rng):
    while True:  # the sizes of bench/make_mixed.py: sides 40-160, aspect between 3:4 and 4:3
        width, height = int(rng.integers(40, 161)), int(rng.integers(40, 161))
        if 3 / 4 <= width / height <= 4 / 3:
            return width, height


def make(root, flat, per_class=60):
    rng = np.random.default_rng(0)
    for c, kind in enumerate(CLASSES):
        for k in range(per_class):
            split = "test" if k % 5 == 0 else "train"
            path = root / (kind if flat else f"{split}/{kind}") / f"{k:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(drawing(kind, 1000 * c + k, mixed_size(rng)))
    return root


def engine(*args, cwd, env=None):
    run_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    run_env.pop("ENGINE_TEST_PAUSE_AT", None)
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=run_env, timeout=TIMEOUT)


def ok(result):
    assert result.returncode == 0, result.stderr
    return result.stdout


TRAIN = ["--epochs", "4", "--batch-size", "16", "--no-amp", "--device", "cpu", "--quiet", "--lr", "0.05"]


def test_mixed_sizes_train_and_predict_agrees_with_eval_image_by_image(tmp_path):
    data = make(tmp_path / "mixed", flat=False)
    cache = {"ENGINE_CACHE_DIR": str(tmp_path / "cache")}
    refused = engine("train", "--data", data, "--out", tmp_path / "no", cwd=tmp_path, env=cache)
    assert refused.returncode == 2 and "pass --image-size" in refused.stderr and not (tmp_path / "no").exists()
    ok(engine("train", "--data", data, "--image-size", "24", "--model", "lenet", *TRAIN, "--out", tmp_path / "run",
              cwd=tmp_path, env=cache))
    checkpoint = load(tmp_path / "run" / "best.pt")
    assert checkpoint.spec.shape == [3, 24, 24] and checkpoint.config["image_size"] == "24"
    ok(engine("export", tmp_path / "m.onnx", "--checkpoint", tmp_path / "run" / "best.pt", cwd=tmp_path, env=cache))
    files = sorted((data / "test").rglob("*.jpg"))
    lines = [json.loads(line) for line in ok(engine("predict", tmp_path / "m.onnx", *files, "--json", "--topk", "1",
                                                    cwd=tmp_path, env=cache)).splitlines()]
    # The checkpoint on the decode cache's pixels, in the test split's order (classes, then files)
    from engine.checkpoint import model_from_checkpoint
    from engine.normalization import Normalized

    tensors = torch.load(next((tmp_path / "cache").glob("*-24x24-stretch.pt")), weights_only=True)
    model = Normalized(model_from_checkpoint(checkpoint), checkpoint.spec.mean, checkpoint.spec.std).eval()
    with torch.no_grad():
        top = model(tensors["test_x"].float() / 255).argmax(1)
    assert [line["top"][0]["class"] for line in lines] == [CLASSES[i] for i in top]
    assert (top == tensors["test_y"]).float().mean() > 0.6  # it learned the shapes (chance is 1/3)


def test_a_folder_without_a_split_holds_out_a_test_set_and_eval_uses_exactly_it(tmp_path):
    data = make(tmp_path / "flat", flat=True)
    cache = {"ENGINE_CACHE_DIR": str(tmp_path / "cache")}
    printed = ok(engine("train", "--data", data, "--image-size", "20", "--test-split", "25%", "--model", "lenet",
                        *TRAIN[:-3], "--lr", "0.05", "--out", tmp_path / "run", cwd=tmp_path, env=cache))
    assert "135 train / 45 test images" in printed  # 25% of each class of 60: 15 x 3
    checkpoint = load(tmp_path / "run" / "best.pt")
    assert checkpoint.config["test_split"] == "25%"
    shown = ok(engine("eval", tmp_path / "run" / "best.pt", "--no-amp", "--device", "cpu", cwd=tmp_path, env=cache))
    assert "(45 test images of" in shown
    accuracy = float(shown.split("Test_acc:")[1].split("%")[0]) / 100
    assert accuracy == pytest.approx(checkpoint.metrics[-1]["test_acc"], abs=1e-4)  # the very same images
    # The held-out images are the seeded, stratified ones: recomputed here from the labels alone
    from engine.data.layout import stratified

    tensors = torch.load(next((tmp_path / "cache").glob("*-20x20-stretch.pt")), weights_only=True)
    _, held = stratified(tensors["train_y"], 0.25, 0, list(CLASSES))
    assert len(held) == 45 and torch.bincount(tensors["train_y"][held]).tolist() == [15, 15, 15]
    # A copy of the run's images is recognised: the images it held out are scored, not the 135 it trained on
    import shutil

    shutil.copytree(data, tmp_path / "copy")
    copied = ok(engine("eval", tmp_path / "run" / "best.pt", "--data", tmp_path / "copy", "--no-amp", "--device", "cpu",
                       cwd=tmp_path, env=cache))
    assert "(45 test images of" in copied and "moved or copied" in copied
    assert copied.count("Decoding ") == 1 and copied.count("Decoded ") == 1  # the copy's decode, said as it goes
    # Other data than the run's, with no split of its own, is evaluated whole (--test-split all)
    (tmp_path / "copy" / "disc" / "998.jpg").write_bytes(drawing("disc", 998, (50, 50)))
    other = ok(engine("eval", tmp_path / "run" / "best.pt", "--data", tmp_path / "copy", "--no-amp", "--device", "cpu",
                      cwd=tmp_path, env=cache))
    assert "(181 test images of" in other
    refused = engine("train", "--data", data, "--test-split", "all", "--out", tmp_path / "all", cwd=tmp_path, env=cache)
    assert refused.returncode == 2 and "--test-split all is for engine eval" in refused.stderr
    assert not (tmp_path / "all").exists()
    # The run's own folder changed since: its held-out images are not the run's any more, and eval says so,
    # for the checkpoint and for its ONNX file (which keeps the run's data fingerprint)
    ok(engine("export", tmp_path / "m.onnx", "--checkpoint", tmp_path / "run" / "best.pt", cwd=tmp_path, env=cache))
    unchanged = engine("eval", tmp_path / "m.onnx", cwd=tmp_path, env=cache)
    assert unchanged.returncode == 0 and "changed since" not in unchanged.stderr
    (data / "disc" / "999.jpg").write_bytes(drawing("disc", 999, (50, 50)))
    for model in (tmp_path / "run" / "best.pt", tmp_path / "m.onnx"):
        changed = engine("eval", model, "--no-amp" if model.suffix == ".pt" else "--quiet", cwd=tmp_path, env=cache)
        assert changed.returncode == 0 and "test set of" in changed.stderr and "changed since" in changed.stderr
        named = engine("eval", model, "--data", data, "--quiet", cwd=tmp_path, env=cache)  # its own path, named again
        assert named.returncode == 0 and "test set of" in named.stderr and "changed since" in named.stderr
