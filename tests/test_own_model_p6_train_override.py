"""A model class that overrides nn.Module.train with a method of its own: `def train(self)` stopped
`engine train` and `engine summary` with a traceback (the probe's model.eval() calls train(False)),
and a training loop named `train(self, loader)` failed with "'bool' object is not iterable" (an
`eval(self, loader)`, as "its forward in evaluation mode raised TypeError"). Each is now one line saying what torch calls it as; an override that keeps `train(mode=True)` works."""

import textwrap

import pytest

from engine.errors import UsageError
from engine.models.build import build
from engine.models.reference import parse_model

NETS = textwrap.dedent("""
    import torch
    from torch import nn

    class Base(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.head = nn.Linear(4, num_classes)

        def forward(self, x):
            return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))

    class NoMode(Base):
        def train(self):
            return self

    class Loop(Base):
        def train(self, loader):
            for batch in loader:
                pass

    class EvalLoop(Base):
        def eval(self, loader):
            return 0.5

    class FrozenNorm(Base):
        def train(self, mode=True):
            super().train(mode)
            self.bn.eval()
            return self
""")


@pytest.mark.parametrize("name, shown", [("NoMode", "train()"), ("Loop", "train(loader)"), ("EvalLoop", "eval(loader)")])
def test_a_train_method_torch_cannot_call_is_one_line(tmp_path, name, shown):
    (tmp_path / "p6_override_nets.py").write_text(NETS)
    with pytest.raises(UsageError, match=rf"p6_override_nets.py:{name} overrides nn.Module.{shown.split('(')[0]} with "
                                         rf"{shown.replace('(', '[(]').replace(')', '[)]')}, which torch"):
        build(parse_model(f"{tmp_path / 'p6_override_nets.py'}:{name}"), (3, 8, 8), 3, batch=4)


def test_an_override_that_keeps_the_mode_builds(tmp_path):
    (tmp_path / "p6_override_nets.py").write_text(NETS)
    model = build(parse_model(f"{tmp_path / 'p6_override_nets.py'}:FrozenNorm"), (3, 8, 8), 3, batch=4)
    assert model.train().training and not model.bn.training
