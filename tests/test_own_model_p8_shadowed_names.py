"""A model file importing its own export.py or kernels.py from beside it (`from export import Head`),
names the engine's other top-level packages hold: where the engine's package was imported first, the
import failed ('cannot import name Head from export (/.../export/__init__.py)': engine export, eval of a
run), and where the user's came first it took the name, so the engine's own imports failed after it
('export.onnx_export'; 'export' is not a package': engine summary stopped with that traceback). The
user's file now imports its own modules, and the engine keeps its packages."""

import importlib
import sys

from engine.models.build import build
from engine.models.reference import parse_model
from engine.models.user_code import with_neighbours

NETS = """
import torch
from torch import nn

from export import Head
from kernels import SCALE


class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = Head(4, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)) * SCALE)
"""


def test_a_model_files_own_export_and_kernels_modules_are_its_own_and_the_engines_stay(tmp_path):
    (tmp_path / "nets.py").write_text(NETS)
    (tmp_path / "export.py").write_text("from torch import nn\n\n\nclass Head(nn.Linear):\n"
                                         "    def extra_repr(self):\n        return 'mine'\n")
    (tmp_path / "kernels.py").write_text("SCALE = 2.0\n")
    ref = parse_model(f"{tmp_path / 'nets.py'}:Net")
    model = build(ref, (3, 8, 8), 3)
    assert type(model.head).extra_repr.__code__.co_filename == str(tmp_path / "export.py")
    assert importlib.import_module("export.onnx_export").__file__.endswith("export/onnx_export.py")
    assert importlib.import_module("kernels.envelope").__file__.endswith("kernels/envelope.py")
    assert not sys.modules["export"].__file__.startswith(str(tmp_path))
    assert set(with_neighbours(ref).neighbours) == {"export.py", "kernels.py"}  # edits to them are said
