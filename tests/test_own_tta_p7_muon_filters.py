"""--optimizer muon steps the conv filters (training.md), but chose them as 'every parameter of 3 or more
dimensions': a user model's per-channel scale (1, C, 1, 1), torchvision ConvNeXt's layer scale (C, 1, 1) and a
ViT's class token and position embedding went to Muon, whose rescaling to norm sqrt(rows) took ConvNeXt's layer
scale from 1e-6 to about 1 at the first step, and the Optimizer line counted them as conv filters. Now only the
parameters of convolution modules are filters; the rest take Nesterov SGD."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.config import Config
from engine.optim import build_optimizer


class Scaled(nn.Module):
    """A user's net with a learnable per-channel scale kept 4-D to broadcast, as many write it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.scale = nn.Parameter(torch.full((1, 8, 1, 1), 1e-3))  # starts small, as a layer scale does
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head((self.scale * torch.relu(self.conv(x))).mean((2, 3)))


def muon_params(optimizer):
    return [p for g in optimizer.param_groups if g["orthogonalize"] for p in g["params"]]


@pytest.mark.slow
def test_a_4d_scale_is_not_a_filter_and_keeps_its_value():
    torch.manual_seed(0)
    model = Scaled()
    optimizer = build_optimizer(Config(optimizer="muon", lr=0.01), model)
    assert [id(p) for p in muon_params(optimizer)] == [id(model.conv.weight)]
    assert optimizer.describe().startswith("Optimizer: Muon for 1 conv filter (216 parameters)")
    F.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.tensor([0, 1, 0, 1])).backward()
    optimizer.step()
    assert model.scale.abs().max().item() < 0.01  # an SGD step; Muon's rescaling made it norm 1 (0.35 each)


@pytest.mark.slow
def test_torchvision_convnext_layer_scale_and_vit_embeddings_take_sgd():
    import torchvision

    convnext = torchvision.models.convnext_tiny(num_classes=2)
    chosen = {id(p) for p in muon_params(build_optimizer(Config(optimizer="muon"), convnext))}
    scales = [p for n, p in convnext.named_parameters() if n.endswith("layer_scale")]
    assert scales and not any(id(p) in chosen for p in scales)
    convs = [m.weight for m in convnext.modules() if isinstance(m, nn.Conv2d)]
    assert chosen == {id(p) for p in convs}

    vit = torchvision.models.vit_b_16(num_classes=2, image_size=32)
    chosen = muon_params(build_optimizer(Config(optimizer="muon"), vit))
    assert [id(p) for p in chosen] == [id(vit.conv_proj.weight)]
