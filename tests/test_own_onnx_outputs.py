"""A file whose graph ends in a softmax gives probabilities: engine predict shows them as they are.

Built with onnx.helper and run in onnxruntime: (N, 3, 2, 2) pixels -> Flatten -> MatMul -> the ending.
Before, predict took a softmax over the probabilities again, so a model sure of one class read as an
even split (100% shown as 57.6% among 3 classes).
"""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import export
from engine.cli import main

WEIGHTS = np.linspace(-40, 40, 12 * 3, dtype=np.float32).reshape(12, 3)  # large: a confident model


def write_model(path, ending, axis=1):
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w"], ["scores"])]
    if ending:
        nodes.append(helper.make_node(ending, ["scores"], ["ended"], axis=axis))
    nodes.append(helper.make_node("Identity", ["ended" if ending else "scores"], ["logits"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 2, 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
                              [onnx.numpy_helper.from_array(WEIGHTS, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def expected_probabilities(pixels):
    scores = (pixels.reshape(len(pixels), -1).astype(np.float64) / 255) @ WEIGHTS.astype(np.float64)
    shifted = np.exp(scores - scores.max(1, keepdims=True))
    return shifted / shifted.sum(1, keepdims=True)


@pytest.mark.parametrize("ending, axis", [(None, 1), ("Softmax", 1), ("Softmax", -1), ("LogSoftmax", -1)])
def test_predict_gives_the_models_own_probabilities_whatever_its_last_op(tmp_path, ending, axis):
    path = write_model(tmp_path / "m.onnx", ending, axis)
    pixels = np.random.default_rng(0).integers(0, 256, (5, 2, 2, 3), dtype=np.uint8)
    model = export.load(path, input_size="3x2x2", classes="a,b,c")
    top = model.predict(pixels, topk=3)
    expected = expected_probabilities(pixels.transpose(0, 3, 1, 2))
    for row, want in zip(top, expected):
        assert [c for c, _ in row] == [model.classes[i] for i in np.argsort(-want, kind="stable")]
        np.testing.assert_allclose([p for _, p in row], np.sort(want)[::-1], atol=1e-4)
        assert abs(sum(p for _, p in row) - 1) < 1e-4


def test_predict_command_shows_a_softmax_models_confidence(tmp_path, capsys):
    from PIL import Image

    path = write_model(tmp_path / "m.onnx", "Softmax")
    pixels = np.full((2, 2, 3), 255, np.uint8)  # scores 4x apart: one class near 100%
    Image.fromarray(pixels).save(tmp_path / "white.png")
    assert main(["predict", str(path), str(tmp_path / "white.png"), "--input-size", "3x2x2", "--classes", "a,b,c",
                 "--topk", "1", "--json"]) == 0
    shown = __import__("json").loads(capsys.readouterr().out)["top"][0]
    want = expected_probabilities(pixels.transpose(2, 0, 1)[None])[0]
    assert shown["class"] == "abc"[int(want.argmax())]
    assert shown["probability"] == pytest.approx(want.max(), abs=1e-5)
