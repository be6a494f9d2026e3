"""An operation torch.onnx cannot translate, used through an nn module (nn.AdaptiveMaxPool2d to a size that
does not divide): the line named torch's own pooling.py ('.../torch/nn/modules/pooling.py", line 1388, in
forward: return F.adaptive_max_pool2d(...)'), not the model. It names the model's module now."""

import pytest
import torch
import torch.nn as nn

from engine.errors import EngineError
from export.onnx_export import to_onnx


class Pooled(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
        self.head_pool = nn.AdaptiveMaxPool2d((2, 3))  # 21x35 -> 2x3: no ONNX translation in torch 2.14
        self.fc = nn.Linear(24, 3)

    def forward(self, x):
        return self.fc(self.head_pool(self.body(x)).flatten(1))


@pytest.mark.slow
def test_an_untranslatable_op_inside_a_torch_module_names_the_models_module(tmp_path):
    with pytest.raises(EngineError) as refused:
        to_onnx(Pooled().eval(), torch.rand(2, 1, 23, 37), tmp_path / "m.onnx")
    said = str(refused.value)
    assert "aten.adaptive_max_pool2d (in the model's head_pool: AdaptiveMaxPool2d)" in said, said
    assert "pooling.py" not in said


@pytest.mark.slow
def test_inside_the_normalising_wrapper_the_path_is_the_users(tmp_path):
    from engine.normalization import Normalized

    with pytest.raises(EngineError, match=r"\(in the model's head_pool: AdaptiveMaxPool2d\)"):
        to_onnx(Normalized(Pooled(), [0.5], [0.25]).eval(), torch.rand(2, 1, 23, 37), tmp_path / "m.onnx")
