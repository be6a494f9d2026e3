"""A model whose state dict holds something other than tensors: torch's own `get_extra_state` (a dict
under `_extra_state`) or an overridden `state_dict()`. Before, the run trained to the end and every
checkpoint it wrote was "a damaged engine checkpoint" to eval, export and --resume: the work was
lost. Training now refuses it at start-up in one line; a tensor extra state is fine."""

import textwrap

import pytest
import torch

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
            self.head = nn.Linear(4, num_classes)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).mean((2, 3)))

    class Extra(Base):
        def get_extra_state(self):
            return {"version": 2}

        def set_extra_state(self, state):
            self.version = state["version"]

    class TensorExtra(Base):
        def get_extra_state(self):
            return torch.tensor([2])

        def set_extra_state(self, state):
            self.version = state

    class Overridden(Base):
        def state_dict(self, *args, **kwargs):
            return {**super().state_dict(*args, **kwargs), "meta": "v2"}
""")


def _build(tmp_path, name, batch=4):
    (tmp_path / "p6_extra_nets.py").write_text(NETS)
    return build(parse_model(f"{tmp_path / 'p6_extra_nets.py'}:{name}"), (3, 8, 8), 3, batch=batch)


@pytest.mark.parametrize("name, shown", [("Extra", "'_extra_state' of type dict (get_extra_state)"),
                                         ("Overridden", "'meta' of type str")])
def test_a_state_dict_a_checkpoint_cannot_keep_is_refused_before_training(tmp_path, name, shown):
    with pytest.raises(UsageError, match=rf"p6_extra_nets.py:{name}'s state_dict\(\) holds {shown.replace('(', '[(]').replace(')', '[)]')}, not a tensor"):
        _build(tmp_path, name)


def test_a_tensor_extra_state_and_a_model_only_summarised_build(tmp_path):
    assert torch.equal(_build(tmp_path, "TensorExtra").state_dict()["_extra_state"], torch.tensor([2]))
    assert _build(tmp_path, "Extra", batch=None) is not None  # engine summary asks only for the forward
