"""export.evaluate: `engine eval MODEL.onnx` agrees with `engine eval CHECKPOINT` on the same data."""

import re

import numpy as np
import pytest

from engine.cli import main
from engine.evaluate import evaluate_checkpoint
from export.evaluate import cross_entropy_sum, evaluate_onnx


@pytest.mark.slow
def test_onnx_and_checkpoint_evaluations_agree(tiny_run, tiny_onnx):
    from_checkpoint = evaluate_checkpoint(tiny_run[1], {"amp": False, "quiet": True, "device": "cpu"})
    from_onnx = evaluate_onnx(tiny_onnx, {"quiet": True}, log=lambda *_: None)
    assert from_onnx["images"] == from_checkpoint["images"] == 2000  # the synthetic test split, whole
    assert abs(from_onnx["test_acc"] - from_checkpoint["test_acc"]) <= 0.001  # within 0.1 point
    assert from_onnx["test_loss"] == pytest.approx(from_checkpoint["test_loss"], abs=1e-4)
    assert from_onnx["provider"] == "CPUExecutionProvider"


def test_eval_command_reads_onnx_files_in_the_same_line_format(tiny_onnx, capsys):
    assert main(["eval", str(tiny_onnx), "--limit-test", "300", "--quiet"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("Test_acc:") and "(300 test images of synthetic; ONNX model on CPUExecutionProvider; " in line
    assert re.search(r"; [\d,]+ img/s\)$", line.splitlines()[0])  # as a checkpoint's line ends
    assert main(["eval", str(tiny_onnx), "--compile"]) == 2  # a PyTorch-only flag is refused, not ignored
    assert "onnxruntime" in capsys.readouterr().err


def test_eval_takes_other_data_by_class_name(tiny_onnx, tmp_path, capsys):
    assert main(["eval", str(tiny_onnx), "--data", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert "no such file" in err and err.count("\n") == 1


def test_cross_entropy_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(6, 4)) * 30, np.array([0, 1, 2, 3, 0, 1])
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    expected = -np.log(np.maximum(probabilities[np.arange(6), labels], 1e-300)).sum()
    assert cross_entropy_sum(logits, labels) == pytest.approx(expected, rel=1e-9)


def write_folder(root, classes, size, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    return root


def test_other_data_is_matched_by_class_name_and_refused_at_another_size(tiny_onnx, tmp_path, capsys):
    from engine.data.synthetic import CLASSES

    subset = write_folder(tmp_path / "subset", [CLASSES[7], CLASSES[2]], 32)  # two of its classes, in another order
    result = evaluate_onnx(tiny_onnx, {"data": str(subset), "cache_dir": str(tmp_path / "cache"), "quiet": True})
    import export

    files = sorted((subset / "test").glob("*/*.png"))
    truth = np.array([CLASSES.index(f.parent.name) for f in files])  # the model's own class indices, by name
    logits = export.load(tiny_onnx).logits(files)
    assert result["images"] == 6 and result["test_acc"] == pytest.approx((logits.argmax(1) == truth).mean())
    # the loss depends on every label, so a wrong mapping fails here even where no prediction is right
    assert result["test_loss"] == pytest.approx(cross_entropy_sum(logits, truth) / 6, rel=1e-5)
    small = write_folder(tmp_path / "small", CLASSES[:2], 8)
    assert main(["eval", str(tiny_onnx), "--data", str(small), "--cache-dir", str(tmp_path / "cache")]) == 1
    err = capsys.readouterr().err
    assert "was trained on 3x32x32 images of 10 classes" in err and "has 3x8x8 images" in err and err.count("\n") == 1


def test_a_plain_file_fits_a_folder_of_mixed_sizes_to_its_input_size_as_predict_does(tiny_onnx, tmp_path, capsys):
    """A file without the engine's metadata (--input-size, --classes) was refused on a folder of mixed sizes
    until --image-size was given, and --image-size's advice, 'or leave it out', did not work there."""
    import onnx
    from PIL import Image

    import export
    from engine.data.synthetic import CLASSES

    bare = onnx.load(str(tiny_onnx))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "plain.onnx"))
    rng = np.random.default_rng(0)
    for name in CLASSES[:2]:
        (tmp_path / "mixed" / name).mkdir(parents=True)
        for i, (height, width) in enumerate([(32, 32), (40, 50), (64, 48)]):
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(tmp_path / "mixed" / name / f"{i}.png")
    plain = ["eval", str(tmp_path / "plain.onnx"), "--input-size", "3x32x32", "--classes", ",".join(CLASSES),
             "--data", str(tmp_path / "mixed"), "--cache-dir", str(tmp_path / "cache")]
    assert main([*plain, "--quiet"]) == 0 and "(6 test images of" in capsys.readouterr().out
    result = evaluate_onnx(tmp_path / "plain.onnx", {"data": str(tmp_path / "mixed"), "cache_dir": str(tmp_path / "cache"),
                                                     "quiet": True}, input_size="3x32x32", classes=CLASSES)
    files = sorted((tmp_path / "mixed").glob("*/*.png"))
    truth = np.array([CLASSES.index(f.parent.name) for f in files])
    logits = export.load(tmp_path / "plain.onnx", input_size=(3, 32, 32), classes=CLASSES).logits(files)  # predict's pixels
    assert result["images"] == 6 and result["test_loss"] == pytest.approx(cross_entropy_sum(logits, truth) / 6, rel=1e-5)
    err = bad_line(capsys, main([*plain, "--image-size", "16"]))
    assert err == (f"engine: error: --image-size 16 fits the images to 16x16, but {tmp_path / 'plain.onnx'} takes 32x32: "
                   "give --image-size 32x32, or leave it out")
    # a file whose run took its images' own size (no --image-size): leaving it out fits only images of that size
    with_metadata = ["eval", str(tiny_onnx), "--data", str(tmp_path / "mixed"), "--cache-dir", str(tmp_path / "cache")]
    assert bad_line(capsys, main([*with_metadata, "--image-size", "16"])).endswith(
        "give --image-size 32x32, or leave it out where every image is 32x32 already (images of other sizes need it)")
    assert "images differ in size" in bad_line(capsys, main(with_metadata))
    assert main([*with_metadata, "--image-size", "32", "--quiet"]) == 0


def bad_line(capsys, code):
    """The one stderr line of a refused command (exit 1 or 2)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert code in (1, 2) and len(err) == 1 and "Traceback" not in err[0], (code, err)
    return err[0]
