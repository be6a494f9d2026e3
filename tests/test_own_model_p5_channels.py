"""A user model of 3 input channels on grey images (or of 1 on colour ones): the probe's line said
torch's 'expected input[2, 1, 8, 8] to have 3 channels, but got 1 channels instead' and nothing
of what to change; it now says how the engine passes the channel count."""

import pytest

from engine.errors import UsageError
from engine.models.build import build
from engine.models.reference import parse_model

NETS = '''
import torch.nn as nn


class Fixed(nn.Module):  # 3 channels, whatever the data
    def __init__(self, num_classes):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))

    def forward(self, x):
        return self.net(x)


class Takes(nn.Module):  # takes in_channels, and ignores it
    def __init__(self, num_classes, in_channels=3):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))

    def forward(self, x):
        return self.net(x)


class Follows(nn.Module):
    def __init__(self, num_classes, in_channels=3):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, num_classes))

    def forward(self, x):
        return self.net(x)
'''


@pytest.fixture
def nets(tmp_path):
    (tmp_path / "nets.py").write_text(NETS)
    return tmp_path / "nets.py"


@pytest.mark.parametrize("channels, takes", [(1, 3), (3, 1)])
def test_a_model_without_a_channel_argument_is_told_to_take_one(nets, channels, takes):
    source = nets.read_text().replace("nn.Conv2d(3, 4, 3)", f"nn.Conv2d({takes}, 4, 3)")
    nets.write_text(source)
    with pytest.raises(UsageError) as error:
        build(parse_model(f"{nets}:Fixed"), (channels, 8, 8), 3)
    message = str(error.value)
    assert f"cannot take {channels}x8x8 images" in message
    assert f"the model takes {takes}: give its constructor an in_channels argument" in message


def test_a_model_that_ignores_the_channels_passed_is_told_so(nets):
    with pytest.raises(UsageError, match="the engine passed in_channels for 1-channel images, which that layer does"):
        build(parse_model(f"{nets}:Takes"), (1, 8, 8), 3)


def test_model_args_that_set_the_channels_are_named(nets):
    with pytest.raises(UsageError, match=r"--model-args sets in_channels 3: leave it out"):
        build(parse_model(f"{nets}:Follows", '{"in_channels": 3}'), (1, 8, 8), 3)
    assert build(parse_model(f"{nets}:Follows"), (1, 8, 8), 3)(__import__("torch").zeros(2, 1, 8, 8)).shape == (2, 3)
