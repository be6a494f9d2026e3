"""A model the user's own code compiles: a factory that returns `torch.compile(Net())` or calls
`net.compile()`, and `train(model=torch.compile(Net()))`. The engine trains and saves the module
itself (its checkpoint keys free of `_orig_mod.`), compiles it where --compile says, and says so in
one line; before, the factory's run said "eager" while the user's compile ran, its checkpoint kept
`_orig_mod.` keys, and train(model=torch.compile(net)) was refused as "torch's own class"."""

import textwrap

import pytest
import torch

from engine.checkpoint import load
from engine.config import Config
from engine.models.build import build
from engine.models.reference import parse_model
from engine.models.user_code import load_code

NETS = textwrap.dedent("""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4, num_classes)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).mean((2, 3)))

    def wrapped(num_classes=10):
        return torch.compile(Net(num_classes))

    def in_place(num_classes=10):
        net = Net(num_classes)
        net.compile()
        return net
""")


def _nets(tmp_path):
    path = tmp_path / "compiled_nets.py"
    path.write_text(NETS)
    return path


@pytest.mark.slow  # torch.compile imports dynamo (~2 s)
def test_a_factory_that_compiles_gives_the_module_itself_said_once(tmp_path, capsys):
    path = _nets(tmp_path)
    for name, how in [("wrapped", "torch.compile(...)"), ("in_place", ".compile()")]:
        model = build(parse_model(f"{path}:{name}"), (3, 8, 8), 3)
        assert type(model).__name__ == "Net" and model._compiled_call_impl is None
        assert sorted(model.state_dict()) == ["conv.bias", "conv.weight", "head.bias", "head.weight"]
        err = capsys.readouterr().err
        assert f"engine: warning: compiled_nets.py:{name} returns a module already compiled ({how})" in err
        assert err.count("already compiled") == 1


@pytest.mark.slow  # a training run
def test_train_takes_a_compiled_module_and_its_wrapper_ends_trained(tmp_path, capsys):
    from engine.train import train

    Net = load_code(parse_model(f"{_nets(tmp_path)}:Net"))
    torch.manual_seed(0)
    net = Net(num_classes=10)
    compiled = torch.compile(net)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out, _ = train(Config(epochs=1, limit_train=64, limit_test=32, batch_size=32, amp=False, device="cpu",
                          quiet=True, out=str(tmp_path / "run")), log=lambda *_: None, model=compiled)
    assert "train(model=...) was given a module already compiled" in capsys.readouterr().err
    saved = load(out / "last.pt")
    assert saved.ref.name == "Net" and sorted(saved.model) == sorted(before)
    assert all(torch.equal(compiled.state_dict()[f"_orig_mod.{k}"], v) for k, v in saved.model.items())
    assert not all(torch.equal(net.state_dict()[k], v) for k, v in before.items())
