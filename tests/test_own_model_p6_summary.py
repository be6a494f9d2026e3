"""`engine summary` of a model whose own code freezes part of it (a backbone with requires_grad
False): the training FLOPs leave those gradients out, and the summary says how many parameters
train, above the total (still the last line, which scripts read). Before, it gave the total alone."""

from torch import nn

from engine.models import format_summary


def _net(frozen):
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    if frozen:
        net[0].requires_grad_(False)
    return net


def test_parameters_a_model_freezes_itself_are_said_above_the_total():
    lines = format_summary("Net", _net(frozen=True), (3, 8, 8)).splitlines()
    assert lines[-2:] == ["Trainable parameters: 25 (112 have requires_grad False)", "Total parameters: 137"]
    assert not any(line.startswith("Trainable") for line in format_summary("Net", _net(frozen=False), (3, 8, 8)).splitlines())
