"""--init-from into a model that registers its classifier before its features (`self.classifier =
nn.Linear(...)` first in __init__): the head was taken to be the last Linear/Conv2d in module order,
so weights of another class count were refused ('classifier.weight is (3, 16) there, (10, 16)
here') instead of loading everything but the head, as for any other model."""

import pytest
import torch
from torch import nn

from engine.errors import EngineError
from engine.models.weights import init_from


class HeadFirst(nn.Module):
    def __init__(self, num_classes, width=16):
        super().__init__()
        self.classifier = nn.Linear(width, num_classes)
        self.features = nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.classifier(self.features(x))


def test_a_head_registered_first_is_re_initialised_for_another_class_count(tmp_path):
    torch.manual_seed(0)
    source = HeadFirst(3)
    torch.save(source.state_dict(), tmp_path / "three.pt")
    model = HeadFirst(10)
    head = model.classifier.weight.detach().clone()
    said = []
    assert sorted(init_from(model, tmp_path / "three.pt", say=said.append)) == ["classifier.bias", "classifier.weight"]
    assert torch.equal(model.features[0].weight, source.features[0].weight)  # the rest loaded
    assert torch.equal(model.classifier.weight, head)  # the head kept as built
    assert "classifier.weight, classifier.bias re-initialised (3 classes there, 10 here)" in said[0]


def test_another_width_is_still_refused(tmp_path):
    torch.save(HeadFirst(3, width=8).state_dict(), tmp_path / "narrow.pt")
    with pytest.raises(EngineError, match="does not fit this model"):
        init_from(HeadFirst(10), tmp_path / "narrow.pt", say=lambda *_: None)
