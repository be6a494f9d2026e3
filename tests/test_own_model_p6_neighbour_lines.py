"""An error in a file the model's file imports from beside it (`from p6_blocks import block`): the line
named the model's file alone, and a SyntaxError's line number as if it were the model file's
("nets.py raised SyntaxError on import (line 5)" for a nets.py of 4 lines). The line now names both:
"(line 2; p6_blocks.py, line 5)", on import and in the probe's forward."""

import pytest

from engine.errors import EngineError
from engine.models.build import build
from engine.models.reference import parse_model

NETS = """import torch.nn as nn
from {blocks} import block


class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.block = block(3)
        self.head = nn.Linear(3, num_classes)

    def forward(self, x):
        return self.head(self.block(x).mean((2, 3)))
"""
BLOCKS = {
    "syntax": ("import torch.nn as nn\n\n\n\ndef block(c)\n    return nn.Conv2d(c, c, 3)\n", "SyntaxError on import (line 2; ", ", line 5)"),
    "name": ("import torch.nn as nn\nx = 1\ny = undefined_name\n", "NameError on import (line 2; ", ", line 3)"),
    "forward": ("import torch.nn as nn\n\n\nclass Block(nn.Module):\n    def forward(self, x):\n        return x.view(3)\n\n\n"
                "def block(c):\n    return Block()\n", "its forward raised RuntimeError (line 12; ", ", line 6)"),
}


@pytest.mark.parametrize("case", sorted(BLOCKS))
def test_an_error_in_a_neighbour_names_its_file_and_line(tmp_path, case):
    source, before, after = BLOCKS[case]
    blocks = f"p6_blocks_{case}"
    (tmp_path / f"{blocks}.py").write_text(source)
    (tmp_path / "nets.py").write_text(NETS.format(blocks=blocks))
    with pytest.raises(EngineError) as caught:
        build(parse_model(f"{tmp_path / 'nets.py'}:Net"), (3, 8, 8), 3)
    assert f"{before}{blocks}.py{after}" in str(caught.value)
