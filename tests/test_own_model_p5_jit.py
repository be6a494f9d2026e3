"""A factory that returns a torch.jit model: `return torch.jit.trace(Net(), x)` was refused with
'TopLevelTracedModule.__init__ does not call super().__init__()', which its user never wrote; and
`return torch.jit.script(Net())` trained, then export said to 'script nothing in the model's
__init__', which its __init__ does not do. Each line now says what was returned."""

import pytest
import torch

from engine.errors import UsageError
from engine.models.build import build
from engine.models.reference import parse_model
from engine.normalization import Normalized
from export.onnx_export import to_onnx

NETS = '''
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def traced(num_classes):
    return torch.jit.trace(Net(num_classes), torch.zeros(1, 3, 8, 8))
'''


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")  # the user's trace, on purpose
def test_a_traced_module_is_said_as_such(tmp_path):
    (tmp_path / "nets.py").write_text(NETS)
    with pytest.raises(UsageError) as error:
        build(parse_model(f"{tmp_path / 'nets.py'}:traced"), (3, 8, 8), 3, batch=4)
    assert "gave a torch.jit.trace-d module; return the nn.Module itself" in str(error.value)
    assert "super().__init__()" not in str(error.value)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # the user's script, on purpose
def test_export_of_a_model_scripted_as_a_whole_says_to_return_it_unscripted(tmp_path):
    net = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()))
    with pytest.raises(UsageError, match=r"the model is torch.jit.script-ed as a whole \(Sequential\).*return the "
                                         r"nn.Module unscripted"):
        to_onnx(Normalized(net, [0.5] * 3, [0.5] * 3), torch.zeros(1, 3, 8, 8), tmp_path / "s.onnx")
    assert not (tmp_path / "s.onnx").exists()
