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
from engine.errors import EngineError, UsageError
from engine.normalization import Normalized
from export.predict import predict_files


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
    assert main(["predict", str(tiny_onnx), str(paths[1]), "--json", str(paths[4])]) == 0  # an image after an option
    assert [json.loads(line)["image"] for line in capsys.readouterr().out.splitlines()] == [str(paths[1]), str(paths[4])]


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
def test_a_bad_image_is_one_line_and_the_good_ones_are_still_predicted(tiny_onnx, tmp_path, capsys, name, content,
                                                                        message):
    good = write_images(tmp_path / "images")[0]
    bad = tmp_path / name
    if content is not None:
        bad.write_bytes(content)
    assert main(["predict", str(tiny_onnx), str(good), str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{good}: ") and captured.out.count("\n") == 1
    assert message in captured.err and str(bad) in captured.err and captured.err.count("\n") == 1


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


def test_a_truncated_image_among_good_ones_is_named_and_the_others_predicted(tiny_onnx, tmp_path, capsys):
    paths = write_images(tmp_path / "images")
    last = tmp_path / "images" / "z_truncated.png"
    data = (tmp_path / "images" / "a_rgb.png").read_bytes()
    last.write_bytes(data[: len(data) // 2])  # its header reads; its pixels do not
    assert main(["predict", str(tiny_onnx), *map(str, paths), str(last), "--batch-size", "2"]) == 1
    out, err = capsys.readouterr()
    assert [line.split(": ")[0] for line in out.splitlines()] == list(map(str, paths))
    assert "z_truncated.png" in err and err.count("\n") == 1


def test_a_folder_names_its_broken_links_and_reads_jfif_and_jpe(tiny_onnx, tmp_path, capsys):
    folder = tmp_path / "photos"
    good = write_images(folder)[0]
    jpeg = folder / "b.jfif"
    Image.open(good).convert("RGB").save(jpeg, format="JPEG")
    (folder / "c.jpe").write_bytes(jpeg.read_bytes())
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    assert main(["predict", str(tiny_onnx), str(folder)]) == 1
    out, err = capsys.readouterr()
    assert str(jpeg) in out and str(folder / "c.jpe") in out
    assert "gone.png is a broken link" in err and err.count("\n") == 1


def test_a_folder_follows_links_to_folders_once_as_training_does(tiny_onnx, tmp_path, capsys):
    (tmp_path / "elsewhere").mkdir()
    outside = write_images(tmp_path / "elsewhere" / "yellow")
    folder = tmp_path / "photos"
    folder.mkdir()
    inside = write_images(folder / "red")
    (folder / "yellow").symlink_to(tmp_path / "elsewhere" / "yellow")  # a class folder kept elsewhere
    (folder / "red" / "up").symlink_to(folder)  # a link back up: each folder once, no loop
    write_images(folder / ".hidden")
    assert main(["predict", str(tiny_onnx), str(folder)]) == 0
    shown = [line.split(": ")[0] for line in capsys.readouterr().out.splitlines()]
    assert sorted(shown) == sorted([*map(str, inside), *(str(folder / "yellow" / p.name) for p in outside)])


def test_a_file_whose_graph_fixes_the_batch_runs_a_batch_at_a_time(tiny_onnx, tmp_path):
    model = onnx.load(str(tiny_onnx))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2  # as a fixed-batch exporter writes it
    kept = [p for p in model.metadata_props if p.key != "engine_digest"]  # which has no engine_digest: an edited
    del model.metadata_props[:]  # engine export would be refused (test_own_onnx_p6_digest)
    model.metadata_props.extend(kept)
    fixed = tmp_path / "fixed.onnx"
    onnx.save(model, str(fixed))
    images = np.random.default_rng(0).random((5, 3, 32, 32), dtype=np.float32)
    want = export.load(tiny_onnx).logits(images)
    got = export.load(fixed).logits(images)  # batches of 2, the last padded
    assert got.shape == want.shape and np.allclose(got, want, atol=1e-5)


def test_the_python_api_refuses_what_the_command_line_refuses(tiny_onnx, tmp_path):
    model = export.load(tiny_onnx)
    image = write_images(tmp_path / "images")[0]
    for topk in (0, -1, 1.5, "2", None, True):
        with pytest.raises(UsageError, match="topk must be a whole number"):
            model.predict([image], topk=topk)
    with pytest.raises(UsageError, match="batch_size must be a whole number"):
        predict_files(model, [image], batch_size=0)
    with pytest.raises(UsageError, match="device must be one of auto, cpu, cuda"):
        export.load(tiny_onnx, device="gpu")
    for threads in (0, -3, 1.5):
        with pytest.raises(UsageError, match="threads must be a whole number"):
            export.load(tiny_onnx, threads=threads)
    with pytest.raises(UsageError, match=r"pixels scaled to \[0, 1\].*from 0 to 255"):
        model.logits(np.linspace(0, 255, 2 * 3 * 32 * 32, dtype=np.float32).reshape(2, 3, 32, 32))
    with pytest.raises(UsageError, match=r"must be \(N, 3, 32, 32\).*not \(2, 32, 32, 3\)"):
        model.logits(np.zeros((2, 32, 32, 3), np.float32))  # NHWC


def test_the_python_api_takes_what_a_demanding_caller_passes_and_refuses_the_rest_in_one_line(tiny_onnx, tmp_path):
    import os

    class Where(os.PathLike):  # any os.PathLike, not only pathlib's
        def __fspath__(self):
            return str(tiny_onnx)

    model = export.load(Where(), threads=np.int64(1))
    image = write_images(tmp_path / "images")[0]
    encoded = image.read_bytes()
    assert model.predict(encoded, topk=np.int64(2))[0] == model.predict([image], topk=2)[0]  # a file's bytes
    for kind in (bytearray, memoryview):  # a buffer a web framework or a socket hands over
        assert model.predict(kind(encoded), topk=2)[0] == model.predict([image], topk=2)[0]
    gray_alpha = np.random.default_rng(0).integers(0, 256, (12, 12, 2), dtype=np.uint8)
    assert model.logits(gray_alpha).shape == (1, 10)  # (H, W, 2): gray and alpha, one image
    for bad, message in ((None, "cannot read images from NoneType"), (5, "cannot read images from int"),
                         ({"a": 1}, "cannot read images from dict"), (b"", "image bytes are empty"),
                         (b"not an image", "image bytes are not an image PIL can read"),
                         (Image.new("RGB", (0, 0)), "0x0 pixels: an image with no pixels"),
                         (np.zeros((0, 10, 3), np.uint8), "10x0 pixels: an image with no pixels"),
                         (np.zeros((0, 3, 32, 32), np.float32), "the prepared batch is empty"),
                         (np.full((2, 3, 32, 32), 0.5), r"not float64 \(a prepared batch for Classifier.logits is float32")):
        with pytest.raises((UsageError, EngineError), match=message):
            model.logits(bad)
    without = onnx.load(str(tiny_onnx))
    del without.metadata_props[:]
    onnx.save(without, str(tmp_path / "bare.onnx"))
    bare = export.load(tmp_path / "bare.onnx", input_size=(3, 32, 32), classes=[f"c{i}" for i in range(10)])
    assert bare.classes[0] == "c0" and bare.predict([image])[0][0][0].startswith("c")


def test_a_folder_with_no_image_is_named_and_the_other_arguments_still_predicted(tiny_onnx, tmp_path, capsys):
    good = write_images(tmp_path / "images")[0]
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tiny_onnx), str(good), str(tmp_path / "empty")]) == 1
    out, err = capsys.readouterr()
    assert out.startswith(f"{good}: ") and "empty holds no image files" in err and err.count("\n") == 1


@pytest.mark.slow
def test_a_terminal_that_cannot_show_a_class_name_gets_it_escaped_not_a_traceback(tiny_onnx, tmp_path):
    import subprocess
    import sys

    model = onnx.load(str(tiny_onnx))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "bare.onnx"))
    image = write_images(tmp_path / "images")[0]
    classes = ",".join(["日本", "dög", *[f"c{i}" for i in range(8)]])
    env = {**__import__("os").environ, "PYTHONIOENCODING": "ascii", "LC_ALL": "C"}
    done = subprocess.run([sys.executable, "-m", "engine", "predict", str(tmp_path / "bare.onnx"), str(image),
                           "--input-size", "3x32x32", "--classes", classes, "--topk", "10"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "\\u65e5\\u672c" in done.stdout and "d\\xf6g" in done.stdout


def test_an_unknown_flag_points_to_its_commands_help(capsys):
    for argv, command in ((["train", "--bogus"], "train"), (["predict", "m.onnx", "a.png", "--bogus"], "predict")):
        assert main(argv) == 2
        assert capsys.readouterr().err.strip() == (f"engine: error: engine {command}: unrecognized arguments: --bogus "
                                                   f"(see engine {command} --help)")


@pytest.mark.slow
def test_dash_reads_one_image_from_standard_input_as_cat_and_tar_do(tiny_onnx, tmp_path, capsys):
    import io
    import subprocess
    import sys

    paths = write_images(tmp_path / "images")
    expected = export.load(tiny_onnx).predict([paths[4]], topk=2)[0]
    with open(paths[4], "rb") as image:  # the command, its stdin the file: a pipe, as `< photo.jpg` gives
        done = subprocess.run([sys.executable, "-m", "engine", "predict", str(tiny_onnx), str(paths[0]), "--json", "-",
                               "--topk", "2"], stdin=image, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    objects = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o["image"] for o in objects] == [str(paths[0]), "-"]
    assert [t["class"] for t in objects[1]["top"]] == [c for c, _ in expected]
    np.testing.assert_allclose([t["probability"] for t in objects[1]["top"]], [p for _, p in expected], atol=1e-6)
    model = export.load(tiny_onnx)  # the library takes the same argument, reading the stream it is given
    lines = []
    assert predict_files(model, ["-"], topk=1, say=lines.append, stdin=io.BytesIO(paths[1].read_bytes())) == 0
    assert lines == [f"-: {model.predict([paths[1]])[0][0][0]} {model.predict([paths[1]])[0][0][1] * 100:.1f}%"]
    errors = []  # not an image, empty: one line naming standard input; the other images still predicted
    for content in (b"not an image", b""):
        assert predict_files(model, [str(paths[0]), "-"], say=lines.append, warn=errors.append,
                             stdin=io.BytesIO(content)) == 1
        assert errors[-1].startswith("standard input: image bytes are")
    with pytest.raises(UsageError, match="can be given once"):
        predict_files(model, ["-", "-"], stdin=io.BytesIO(b""))
    assert main(["predict", str(tiny_onnx), "./-"]) == 1  # a file named - is ./-, as for cat
    assert "-: no such file or directory" in capsys.readouterr().err
