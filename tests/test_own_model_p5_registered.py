"""A user model that keeps layers in a plain list or dict (`self.blocks = [nn.Conv2d(...)]`) trained
without a word: nn.Module does not register them, so their parameters never reached the optimizer,
the device or the checkpoint, and the run trained only the rest. The probe now refuses it in one line
naming the attribute and nn.ModuleList; lists of registered or parameter-free modules stay fine."""

import pytest
import torch

from engine.errors import UsageError
from engine.models.build import build
from engine.models.reference import parse_model

NETS = '''
import torch
import torch.nn as nn


class Base(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        for layer in self.extra:
            x = layer(x)
        return self.fc(self.conv(x).mean((2, 3)))


class Hidden(Base):
    def __init__(self, num_classes):
        super().__init__(num_classes)
        self.extra = [nn.Conv2d(3, 3, 1), nn.ReLU()]


class InDict(Base):
    def __init__(self, num_classes):
        super().__init__(num_classes)
        self.table = {"scale": nn.Parameter(torch.ones(1))}
        self.extra = []


class Aliases(Base):  # registered layers listed again, and layers with nothing to train: both fine
    def __init__(self, num_classes):
        super().__init__(num_classes)
        self.stages = [self.conv, self.fc]
        self.extra = (nn.ReLU(), nn.Identity())
'''


@pytest.fixture
def nets(tmp_path):
    (tmp_path / "nets.py").write_text(NETS)
    return tmp_path / "nets.py"


@pytest.mark.parametrize("name, said", [("Hidden", "keeps Conv2d in the plain list extra"),
                                        ("InDict", "keeps Parameter in the plain dict table")])
def test_layers_in_a_plain_container_are_refused_for_training(nets, name, said):
    with pytest.raises(UsageError) as error:
        build(parse_model(f"{nets}:{name}"), (3, 8, 8), 3, batch=4)
    assert said in str(error.value) and "nn.ModuleList" in str(error.value)


def test_listed_registered_or_parameter_free_modules_train(nets):
    model = build(parse_model(f"{nets}:Aliases"), (3, 8, 8), 3, batch=4)
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 3)
