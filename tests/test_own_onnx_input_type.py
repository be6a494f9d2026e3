"""A file from another exporter taking uint8 or float16 images was opened and then
failed on its first batch with onnxruntime's own words ('Unexpected input data type'): it is refused when
opened, in one line."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

import export
from engine.cli import main
from engine.errors import EngineError


def write_model(path, input_type=TensorProto.FLOAT, second_input=False):
    """(N, 3, 4, 4) of `input_type` -> (N, 2) float scores."""
    weights = np.linspace(-1, 1, 48 * 2, dtype=np.float32).reshape(48, 2)
    nodes = [helper.make_node("Cast", ["input"], ["pixels"], to=TensorProto.FLOAT),
             helper.make_node("Flatten", ["pixels"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "w"], ["logits"])]
    inputs = [helper.make_tensor_value_info("input", input_type, ["N", 3, 4, 4])]
    if second_input:
        inputs.append(helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1]))
        nodes[-1] = helper.make_node("MatMul", ["flat", "w"], ["raw"])
        nodes.append(helper.make_node("Mul", ["raw", "scale"], ["logits"]))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
                              [onnx.numpy_helper.from_array(weights, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


@pytest.mark.parametrize("input_type, said", [(TensorProto.UINT8, "uint8"), (TensorProto.FLOAT16, "float16")])
def test_an_input_other_than_float32_is_refused_when_opened(tmp_path, capsys, input_type, said):
    path = write_model(tmp_path / "m.onnx", input_type)
    with pytest.raises(EngineError, match=f"m.onnx takes {said} input; the engine feeds float32 pixels in \\[0, 1\\]"):
        export.load(path, input_size="3x4x4", classes="a,b")
    Image.new("RGB", (4, 4), (10, 200, 30)).save(tmp_path / "x.png")
    assert main(["predict", str(path), str(tmp_path / "x.png"), "--input-size", "3x4x4", "--classes", "a,b"]) == 1
    assert f"takes {said} input" in capsys.readouterr().err


def test_a_float32_file_runs_and_a_second_input_keeps_its_line(tmp_path):
    with pytest.raises(EngineError, match=r"m2.onnx: expected one image input and a logits output, found 2 inputs"):
        export.load(write_model(tmp_path / "m2.onnx", second_input=True), input_size="3x4x4", classes="a,b")
    model = export.load(write_model(tmp_path / "m.onnx"), input_size="3x4x4", classes="a,b")
    assert model.logits(np.zeros((1, 3, 4, 4), np.float32)).shape == (1, 2)
