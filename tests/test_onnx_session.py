"""export.session: files are checked before use, and the provider that really runs is the one reported."""

import onnx
import pytest

from engine.errors import EngineError
from export.session import load_checked, open_session, physical_cores


def test_cpu_session_with_full_optimisation_and_one_thread_per_core(tiny_onnx):
    import onnxruntime as ort

    session, provider = open_session(tiny_onnx)  # auto: onnxruntime-gpu without CUDA must say CPU
    assert provider == session.get_providers()[0] == "CPUExecutionProvider"
    options = session.get_session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.intra_op_num_threads == physical_cores() >= 1


def test_cuda_that_does_not_load_is_an_error_when_asked_for(tiny_onnx):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(EngineError, match="CUDA"):
        open_session(tiny_onnx, device="cuda")


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"\x08\x07garbage" * 10, "not a valid ONNX model"),
])
def test_bad_files_are_refused_before_use(tmp_path, content, message):
    path = tmp_path / "m.onnx"
    path.write_bytes(content)
    with pytest.raises(EngineError, match=message):
        load_checked(path)
    with pytest.raises(EngineError, match="no such file"):
        load_checked(tmp_path / "absent.onnx")
    with pytest.raises(EngineError, match="not a file"):
        load_checked(tmp_path)


def test_a_model_that_is_not_an_image_classifier_is_refused(tmp_path):
    graph = onnx.helper.make_graph([onnx.helper.make_node("Add", ["a", "b"], ["c"])], "two_inputs",
                                   [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1]) for n in "ab"],
                                   [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [1])])
    path = tmp_path / "add.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(EngineError, match="one image input"):
        load_checked(path)


def test_a_checkpoint_given_as_a_model_says_to_export_it(tiny_run):
    with pytest.raises(EngineError, match="PyTorch checkpoint, not an ONNX model; export it first"):
        load_checked(tiny_run[1])
