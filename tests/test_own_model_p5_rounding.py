"""Export verification of a model whose float32 logits move with the batch by rounding alone (a run
that diverged leaves logits of 1e5-1e6, as torchvision:efficientnet_b0 did after one epoch on 32x32
images): it was told 'the forward mixes the images of a batch in evaluation mode (a BatchNorm without
running statistics?)', which it does not. A float64 copy now tells rounding from mixing, and the
failure says that no file can match PyTorch closer than PyTorch matches itself."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from engine.errors import EngineError
from export.verify import check_parity, compare


class Rounded(nn.Module):
    """A linear classifier whose float32 logits are rounded to whole numbers at a batch of 1 (as a
    large intermediate value rounds them), and not in float64 or at other batch sizes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        logits = self.fc(x.flatten(1)) * 4
        offset = 1e7 if x.shape[0] == 1 else 0.0  # float32 keeps no fraction beside 1e7; float64 keeps it all
        return (logits + offset) - offset


class Mixing(Rounded):
    def forward(self, x):
        logits = self.fc(x.flatten(1)) * 4
        return logits - logits.mean(0) if x.shape[0] > 1 else logits  # each image's logits depend on the others


def session_of(model):
    """onnxruntime running the plain linear layer (the file a faithful exporter would write)."""
    weight = numpy_helper.from_array((model.fc.weight.detach().numpy().T * 4).astype(np.float32), "w")
    bias = numpy_helper.from_array((model.fc.bias.detach().numpy() * 4).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["mm"]),
         helper.make_node("Add", ["mm", "b"], ["logits"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 2, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], [weight, bias])
    file = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return ort.InferenceSession(file.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture
def images():
    return np.random.default_rng(0).random((16, 3, 2, 2), dtype=np.float32)


def test_float32_rounding_is_not_called_mixing(images):
    model = Rounded().eval()
    parity = compare(session_of(model), model, images, batch_sizes=(1, 16))
    assert "where float64's do not: rounding" in parity.note and "mixes the images" not in parity.note
    assert parity.rounding > 0.1
    with pytest.raises(EngineError, match=r"no file can match PyTorch closer than its own float32 logits match "
                                          r"themselves .*did the training diverge"):
        check_parity(session_of(model), model, images)


def test_a_forward_that_mixes_the_batch_is_still_said_to(images):
    model = Mixing().eval()
    parity = compare(session_of(model), model, images, batch_sizes=(1, 16))
    assert "mixes the images of a batch" in parity.note and parity.rounding == 0
