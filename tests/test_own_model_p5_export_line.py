"""export.onnx_export of a model whose forward branches on a tensor's value (`if x.mean() > 0:`):
the one line names the file and line that branched, which torch.export reports, so the user need
not hunt through the forward for it."""

import inspect

import pytest
import torch
from torch import nn

from engine.errors import EngineError
from export.onnx_export import to_onnx


class Branches(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        x = self.conv(x)
        if x.mean() > 0:
            x = -x
        return x.mean((2, 3))


@pytest.mark.slow
def test_the_branching_line_is_named(tmp_path):
    line = inspect.getsourcelines(Branches.forward)[1] + 2  # the `if`
    with pytest.raises(EngineError) as error:
        to_onnx(Branches().eval(), torch.zeros(2, 3, 8, 8), tmp_path / "m.onnx")
    message = str(error.value)
    assert "branches on a tensor's value" in message and "\n" not in message
    assert f"(test_own_model_p5_export_line.py, line {line}: if x.mean() > 0:)" in message
    assert not (tmp_path / "m.onnx").exists()
