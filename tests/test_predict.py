"""export.predict: the Python API and `engine predict` on images the test writes, in every common mode."""

import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import export
from engine.checkpoint import load, model_from_checkpoint
from engine.cli import main
from engine.normalization import Normalized


def write_images(folder):
    """RGB, gray, RGBA, palette and odd-sized images; returns their paths in sorted order."""
    rng = np.random.default_rng(0)
    folder.mkdir(exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "a_rgb.png")
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(folder / "b_gray.png")
    Image.fromarray(rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)).save(folder / "c_rgba.png")
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).convert("P").save(folder / "d_palette.gif")
    Image.fromarray(rng.integers(0, 256, (57, 23, 3), dtype=np.uint8)).save(folder / "e_other_size.jpg")
    return sorted(folder.iterdir())


def test_the_api_gives_the_models_own_probabilities(tiny_run, tiny_onnx, tmp_path):
    paths = write_images(tmp_path / "images")
    model = export.load(tiny_onnx)
    checkpoint = load(tiny_run[1])
    assert model.classes == checkpoint.spec.classes and model.provider == "CPUExecutionProvider"
    reference = Normalized(model_from_checkpoint(checkpoint), checkpoint.spec.mean, checkpoint.spec.std).eval()
    prepared = model.preprocess(paths)
    with torch.no_grad():
        expected = torch.softmax(reference(torch.from_numpy(prepared)), 1).numpy()
    top = model.predict(paths, topk=3)
    assert len(top) == len(paths) and all(len(t) == 3 for t in top)
    for row, probabilities in zip(top, expected):
        best = np.argsort(-probabilities)[:3]
        assert [c for c, _ in row] == [model.classes[i] for i in best]
        np.testing.assert_allclose([p for _, p in row], probabilities[best], atol=1e-5)
    assert model.predict(Image.open(paths[0]))[0][0] == top[0][0]  # a PIL image
    as_array = np.asarray(Image.open(paths[0]))
    assert model.predict(as_array)[0][0][0] == top[0][0][0]  # a uint8 array


def test_predict_command_text_json_topk_and_batches(tiny_onnx, tmp_path, capsys):
    paths = write_images(tmp_path / "images")
    assert main(["predict", str(tiny_onnx), str(tmp_path / "images"), "--topk", "2", "--batch-size", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [str(p) for p in paths]
    assert all(line.count("%") == 2 for line in lines)
    assert main(["predict", str(tiny_onnx), str(paths[1]), str(paths[4]), "--json"]) == 0
    objects = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o["image"] for o in objects] == [str(paths[1]), str(paths[4])]
    assert all(len(o["top"]) == 3 and abs(sum(t["probability"] for t in o["top"])) <= 1 + 1e-6 for o in objects)


def test_a_file_without_engine_metadata_needs_input_size_and_classes(tiny_onnx, tmp_path, capsys):
    model = onnx.load(str(tiny_onnx))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    image = write_images(tmp_path / "images")[0]
    assert main(["predict", str(bare), str(image)]) == 1
    err = capsys.readouterr().err
    assert "--input-size" in err and "--classes" in err and err.count("\n") == 1
    classes = ",".join(f"c{i}" for i in range(10))
    assert main(["predict", str(bare), str(image), "--input-size", "3x32x32", "--classes", classes]) == 0
    assert capsys.readouterr().out.startswith(f"{image}: c")
    assert main(["predict", str(bare), str(image), "--input-size", "3x32x32", "--classes", "a,b"]) == 1
    assert "logits for 2 classes" in capsys.readouterr().err
    for flags in (["--input-size", "3x32x32", "--classes", classes], ["--input-size", "3x32x32"], ["--classes", "a,b"]):
        assert main(["predict", str(tiny_onnx), str(image), *flags]) == 2  # its own metadata is not overridden
        err = capsys.readouterr().err
        assert "holds the engine's metadata" in err and "leave them out" in err and err.count("\n") == 1


@pytest.mark.parametrize("name, content, message", [
    ("missing.png", None, "no such file"),
    ("zero.png", b"", "empty"),
    ("text.jpg", b"not an image", "not a readable image"),
])
def test_bad_images_stop_before_any_output_with_one_line(tiny_onnx, tmp_path, capsys, name, content, message):
    good = write_images(tmp_path / "images")[0]
    bad = tmp_path / name
    if content is not None:
        bad.write_bytes(content)
    assert main(["predict", str(tiny_onnx), str(good), str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and captured.err.count("\n") == 1


@pytest.mark.parametrize("content", [b"", b"plain text, named .onnx", None])
def test_bad_model_files_are_one_line(tmp_path, capsys, content):
    path = tmp_path / "model.onnx"
    if content is None:
        path = tmp_path / "absent.onnx"
    else:
        path.write_bytes(content)
    image = write_images(tmp_path / "images")[0]
    assert main(["predict", str(path), str(image)]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_a_truncated_model_is_one_line(tiny_onnx, tmp_path, capsys):
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(tiny_onnx.read_bytes()[: tiny_onnx.stat().st_size // 2])
    image = write_images(tmp_path / "images")[0]
    assert main(["predict", str(cut), str(image)]) == 1
    err = capsys.readouterr().err
    assert "not a valid ONNX model" in err and err.count("\n") == 1


def test_a_truncated_image_after_good_ones_prints_no_predictions(tiny_onnx, tmp_path, capsys):
    paths = write_images(tmp_path / "images")
    last = tmp_path / "images" / "z_truncated.png"
    data = (tmp_path / "images" / "a_rgb.png").read_bytes()
    last.write_bytes(data[: len(data) // 2])  # its header reads; its pixels do not
    assert main(["predict", str(tiny_onnx), *map(str, paths), str(last), "--batch-size", "2"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "z_truncated.png" in err and err.count("\n") == 1
