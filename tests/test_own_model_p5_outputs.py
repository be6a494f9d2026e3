"""What the probe says of a user model whose forward returns something other than (batch, classes)
logits: a (logits, features) tuple and a namedtuple were told 'for torchvision googlenet and
inception_v3 pass --model-args aux_logits', which no user model takes; (N, C, 1, 1) logits from a
1x1-conv head were told no hint at all."""

import pytest

from engine.errors import UsageError
from engine.models.build import build
from engine.models.reference import parse_model

NETS = '''
import collections

import torch.nn as nn

Out = collections.namedtuple("Out", "scores features")


class Base(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Conv2d(4, num_classes, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.head(self.pool(self.conv(x)))  # (N, C, 1, 1)


class Pair(Base):
    def forward(self, x):
        features = self.pool(self.conv(x))
        return self.head(features).flatten(1), features


class Named(Base):
    def forward(self, x):
        features = self.pool(self.conv(x))
        return Out(self.head(features).flatten(1), features)
'''


@pytest.fixture
def nets(tmp_path):
    (tmp_path / "nets.py").write_text(NETS)
    return tmp_path / "nets.py"


@pytest.mark.parametrize("name, kind, shown", [("Pair", "a tuple", "model(x)[0]"), ("Named", "an Out", "model(x).scores")])
def test_a_tuple_of_outputs_is_told_to_return_the_logits(nets, name, kind, shown):
    with pytest.raises(UsageError) as error:
        build(parse_model(f"{nets}:{name}"), (3, 8, 8), 5)
    message = str(error.value)
    assert f"returns {kind} in training mode" in message and shown in message
    assert "aux_logits" not in message


def test_logits_of_shape_batch_classes_1_1_are_told_to_flatten(nets):
    with pytest.raises(UsageError, match=r"returns \(2, 5, 1, 1\) .* \(flatten it at the end of its forward: return "
                                         r"x.flatten\(1\)\)$"):
        build(parse_model(f"{nets}:Base"), (3, 8, 8), 5)


@pytest.mark.slow
def test_torchvision_auxiliary_outputs_keep_their_hint():
    with pytest.raises(UsageError, match="aux_logits"):
        build(parse_model("torchvision:googlenet"), (3, 32, 32), 3)
