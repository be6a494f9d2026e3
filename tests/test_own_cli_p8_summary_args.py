"""engine summary --model with --model-args that set the class count or the channels, and no
--num-classes / --input-shape: the model is described as its arguments build it, not refused as
disagreeing with a default (10 classes, 3 channels) the user never chose, with advice about "the
data's" count where summary has no data."""

import contextlib
import io

import pytest

from engine.cli import main

NETS = '''
import torch.nn as nn
class Net(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, num_classes)
    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(1))
class Shaped(nn.Module):
    def __init__(self, in_shape=(3, 32, 32), num_classes=10):
        super().__init__()
        c, h, w = in_shape
        self.fc = nn.Linear(c * h * w, num_classes)
    def forward(self, x):
        return self.fc(x.flatten(1))
'''


def summary(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["summary", *argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def nets(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    return str(path)


def test_model_args_num_classes_is_the_class_count(nets):
    code, out, err = summary("--model", f"{nets}:Net", "--model-args", '{"num_classes": 3}')
    assert (code, err) == (0, "")
    assert "fc     Linear             (3,)" in out
    assert out.rstrip().endswith("Total parameters: 127")  # conv 112 + fc 4*3+3


def test_model_args_in_channels_is_the_input_channels(nets):
    code, out, err = summary("--model", f"{nets}:Net", "--model-args", '{"in_channels": 1}')
    assert (code, err) == (0, "")
    assert f"{nets}:Net: input (1, 32, 32)" in out
    assert out.rstrip().endswith("Total parameters: 90")  # conv 4*9+4 + fc 4*10+10


def test_model_args_in_shape_is_the_input_shape(nets):
    code, out, err = summary("--model", f"{nets}:Shaped", "--model-args", '{"in_shape": [1, 4, 5]}')
    assert (code, err) == (0, "")
    assert "input (1, 4, 5)" in out and out.rstrip().endswith(f"Total parameters: {20 * 10 + 10}")


def test_flags_given_still_must_agree(nets):
    code, out, err = summary("--model", f"{nets}:Net", "--model-args", '{"num_classes": 3}', "--num-classes", "5")
    assert code == 2 and out == "" and err.startswith("engine: error: ") and err.count("\n") == 1
