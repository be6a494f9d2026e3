"""engine.models.classic: lenet and mlp as tutorial 003 writes them."""

import torch

from engine.models import build_model


def test_lenet_layers():
    model = build_model("lenet", (3, 32, 32), 10)
    assert [tuple(getattr(model, f"fc{i}").weight.shape) for i in (1, 2, 3)] == [(120, 400), (84, 120), (10, 84)]
    assert model.feature_shape == (16, 5, 5)
    assert list(model.state_dict())[:2] == ["features.0.conv.weight", "features.0.conv.bias"]


def test_lenet_has_relus_between_its_fc_layers():
    torch.manual_seed(0)
    model = build_model("lenet", (3, 32, 32), 10)
    x = torch.randn(2, 3, 32, 32)
    features = torch.flatten(model.features(x), 1)  # (2, 400)
    out = model(x)
    torch.testing.assert_close(out, model.fc3(torch.relu(model.fc2(torch.relu(model.fc1(features))))))
    assert not torch.allclose(out, model.fc3(model.fc2(model.fc1(features))))


def test_mlp_is_two_linear_layers_with_dropout_only_in_training():
    torch.manual_seed(0)
    model = build_model("mlp", (1, 28, 28), 10)
    assert model.fc1.weight.shape == (128, 784) and model.dropout.p == 0.5
    x = torch.randn(4, 1, 28, 28)
    model.eval()  # no activation between the layers: in eval mode the net is one affine map
    torch.testing.assert_close(model(x), model.fc2(model.fc1(x.flatten(1))))
    model.train()
    assert not torch.allclose(model(x), model(x))  # dropout draws a new mask each pass
