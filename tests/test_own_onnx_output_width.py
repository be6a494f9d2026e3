"""A file whose graph does not fix its output width (another exporter's ['N', 'unk__1']) is checked on
what it gives: --classes naming fewer classes than its outputs was a traceback (IndexError) in engine
predict, and naming more was silently accepted (predict never showed the extra names; engine eval scored
labels against columns that do not exist)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

import export
from engine.cli import main
from engine.errors import EngineError

OUTPUTS = 5


def write_unsized_model(path):
    """(N, 3, 4, 4) -> (N, 5) scores, through a Slice whose end is computed from the pixels, so neither the
    file nor onnxruntime's shape inference knows the output width before it runs."""
    weights = np.linspace(-1, 1, 48 * OUTPUTS, dtype=np.float32).reshape(48, OUTPUTS)
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "w"], ["scores"]),
             helper.make_node("ReduceMax", ["input"], ["top"], keepdims=0), helper.make_node("Add", ["top", "many"], ["end"]),
             helper.make_node("Cast", ["end"], ["ends"], to=TensorProto.INT64),
             helper.make_node("Slice", ["scores", "starts", "ends", "axes"], ["logits"])]
    constants = [onnx.numpy_helper.from_array(weights, "w"), onnx.numpy_helper.from_array(np.array([100.0], np.float32), "many"),
                 onnx.numpy_helper.from_array(np.array([0], np.int64), "starts"),
                 onnx.numpy_helper.from_array(np.array([1], np.int64), "axes")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", "K"])], constants)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


@pytest.mark.parametrize("classes", ["a,b", "a,b,c,d,e,f,g"])
def test_classes_that_do_not_match_the_outputs_are_one_line(tmp_path, classes):
    path = write_unsized_model(tmp_path / "m.onnx")
    model = export.load(path, input_size="3x4x4", classes=classes)
    with pytest.raises(EngineError, match=r"outputs of shape \[1, 5\] for 1 image, not logits for its \d classes"):
        model.predict(np.zeros((4, 4, 3), np.uint8))


def test_predict_and_eval_commands_say_it_in_one_line(tmp_path, capsys):
    path = write_unsized_model(tmp_path / "m.onnx")
    for name in ("cat", "dog", "fox"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((4, 4, 3), 40 * i, np.uint8)).save(tmp_path / "data" / name / f"{i}.png")
    image = str(tmp_path / "data" / "cat" / "0.png")
    assert main(["predict", str(path), image, "--input-size", "3x4x4", "--classes", "cat,dog"]) == 1
    assert "not logits for its 2 classes (cat, dog): --classes must name one" in capsys.readouterr().err
    assert main(["eval", str(path), "--data", str(tmp_path / "data"), "--input-size", "3x4x4",
                 "--classes", "cat,dog,fox,a,b,c"]) == 1
    assert "not logits for its 6 classes" in capsys.readouterr().err
    assert main(["predict", str(path), image, "--input-size", "3x4x4", "--classes", "cat,dog,fox,a,b"]) == 0
    assert capsys.readouterr().out.startswith(f"{image}: ")
