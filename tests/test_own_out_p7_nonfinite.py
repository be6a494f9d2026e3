"""A model whose outputs are NaN or infinite on some images: engine eval printed `Test_loss:nan` (and
`--json` wrote `NaN`, which is not JSON) with an accuracy from an argmax over NaN, exit 0; engine
predict showed `nan%` (`"probability": NaN` under --json) after two numpy RuntimeWarnings with their
source lines. Now eval refuses in one line, and predict names each such image in one line, still
predicting the others, and exits 1."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from engine.errors import EngineError

pytestmark = pytest.mark.slow


def _log_model(path):
    """A 3x4x4 -> 3 classes ONNX file: logits = log(pixels) @ W, W of mixed signs, so an image with a
    black pixel gives -inf + inf = NaN; a grey image gives finite logits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.tile(np.array([[1.0, -1.0, 0.5]], np.float32), (48, 1))  # (48, 3)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("Log", ["flat"], ["logged"]),
         helper.make_node("MatMul", ["logged", "W"], ["logits"])],
        "log_model", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], [numpy_helper.from_array(weights, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # one every onnxruntime reads
    onnx.save(model, path)
    return path


def _images(folder):
    folder.mkdir(parents=True, exist_ok=True)
    black, grey = folder / "black.png", folder / "grey.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(black)
    Image.fromarray(np.full((4, 4, 3), 128, np.uint8)).save(grey)
    return black, grey


def test_predict_names_each_image_with_non_finite_outputs(tmp_path):
    from export.predict import Classifier, predict_files

    model = Classifier(_log_model(tmp_path / "log.onnx"), input_size=(3, 4, 4), classes=["a", "b", "c"])
    black, grey = _images(tmp_path / "photos")
    with pytest.raises(EngineError, match=r"log.onnx gave NaN or infinite outputs for .*black.png: no probabilities"):
        model.predict([grey, black])
    (top,) = model.predict([grey], topk=3)
    assert abs(sum(p for _, p in top) - 1) < 1e-5
    shown, warned = [], []
    assert predict_files(model, [str(black), str(grey)], as_json=True, say=shown.append, warn=warned.append) == 1
    assert [json.loads(line)["image"] for line in shown] == [str(grey)]
    assert len(warned) == 1 and "black.png" in warned[0] and "NaN or infinite" in warned[0]


def test_predict_command_one_line_and_valid_json(tmp_path):
    black, grey = _images(tmp_path / "photos")
    onnx_path = _log_model(tmp_path / "log.onnx")
    done = subprocess.run([sys.executable, "-m", "engine", "predict", str(onnx_path), str(black), str(grey), "--json",
                           "--input-size", "3x4x4", "--classes", "a,b,c"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    [line] = done.stdout.splitlines()
    assert json.loads(line)["image"] == str(grey)  # valid JSON: no NaN
    [error] = done.stderr.splitlines()  # no RuntimeWarning, no traceback
    assert error.startswith("engine: error: ") and "black.png" in error


def test_eval_onnx_refuses_non_finite_loss(tmp_path):
    from export.evaluate import evaluate_onnx

    onnx_path = _log_model(tmp_path / "log.onnx")
    for split in ("train", "test"):
        for name in ("a", "b", "c"):
            _images(tmp_path / "data" / split / name)
    with pytest.raises(EngineError, match=r"log.onnx gives NaN or infinite outputs on images of .*test loss is NaN"):
        evaluate_onnx(onnx_path, {"data": str(tmp_path / "data"), "cache_dir": str(tmp_path / "cache")},
                      input_size=(3, 4, 4), classes=["a", "b", "c"], log=None)


def test_eval_checkpoint_refuses_non_finite_loss(tiny_run, tmp_path):
    from engine.evaluate import evaluate_checkpoint

    checkpoint = torch.load(tiny_run[1], weights_only=True)
    checkpoint["model"]["fc2.bias"][0] = float("inf")  # finite weights elsewhere: NaN logits' softmax
    path = tmp_path / "overflow.pt"
    torch.save(checkpoint, path)
    with pytest.raises(EngineError, match=r"overflow.pt gives NaN or infinite outputs .*test loss is (NaN|infinite)"):
        evaluate_checkpoint(path, {"limit_test": 64, "device": "cpu", "amp": False}, log=None)
    result = evaluate_checkpoint(tiny_run[1], {"limit_test": 64, "device": "cpu", "amp": False}, log=None)
    assert np.isfinite(result["test_loss"])
