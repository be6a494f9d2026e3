"""engine.models: the registry, the tutorials' parameter counts, input-shape fitting (summaries and FLOPs:
tests/test_summary.py)."""

import pytest
import torch
import torch.nn.functional as F

from engine.errors import UsageError
from engine.models import MODELS, build_model, count_parameters, smallest_side

COUNTS = [("cifar_cnn", 246_474), ("cifar_seq", 145_578), ("mnist_cnn", 824_458), ("lenet", 62_006),
          ("mlp", 101_770), ("fast_cifar", 295_120), ("fast_cifar94", 1_972_792)]


def test_every_model_has_a_count():
    assert sorted(name for name, _ in COUNTS) == sorted(MODELS)


@pytest.mark.parametrize("name, expected", COUNTS)
def test_parameter_counts_match_the_tutorials(name, expected):
    model = build_model(name, MODELS[name].reference_shape, 10)
    assert count_parameters(model) == expected == MODELS[name].reference_params


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28), (3, 23, 37)])
def test_every_model_gives_logits_and_gradients(name, shape):
    if min(shape[1:]) < smallest_side(MODELS[name]):
        pytest.skip(f"{name} needs larger images than {shape}")
    torch.manual_seed(0)
    model = build_model(name, shape, 7)
    logits = model(torch.randn(3, *shape))
    assert logits.shape == (3, 7) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 3, 6])).backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)


def test_first_layer_and_flatten_follow_the_input_shape():
    digits = build_model("cifar_cnn", (1, 28, 28), 10)
    assert digits.features[0].conv.in_channels == 1
    assert digits.fc1.in_features == 128 * 1 * 1  # 28 -> 26 -> 13 -> 11 -> 5 -> 3 -> 1
    assert digits(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    colour = build_model("mnist_cnn", (3, 32, 32), 7)
    assert colour.fc1.in_features == 64 * 8 * 8
    assert colour(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    wide = build_model("cifar_seq", (3, 24, 40), 10)
    assert wide(torch.zeros(1, 3, 24, 40)).shape == (1, 10)
    assert build_model("mlp", (3, 32, 32), 10).fc1.in_features == 3 * 32 * 32
    assert build_model("lenet", (1, 28, 28), 10).fc1.in_features == 16 * 4 * 4  # 28 -> 24 -> 12 -> 8 -> 4
    assert build_model("fast_cifar", (1, 28, 28), 10).stem[0].weight.shape == (8, 1, 2, 2)


@pytest.mark.parametrize("name", list(MODELS))
def test_smallest_side_is_exact(name):
    side = smallest_side(MODELS[name])
    build_model(name, (3, side, side), 10).eval()(torch.zeros(1, 3, side, side))
    if side == 1:
        return  # no spatial stages: any image fits
    with pytest.raises(UsageError, match=f"at least {side}x{side}"):
        build_model(name, (3, side - 1, side - 1), 10)


def test_unknown_model_and_too_few_classes():
    with pytest.raises(UsageError, match="unknown model 'resnet'"):
        build_model("resnet", (3, 32, 32), 10)
    with pytest.raises(UsageError, match="at least 2"):
        build_model("cifar_cnn", (3, 32, 32), 1)


# The state-dict keys checkpoints written before the registry was reworked hold.
SAVED_KEYS = {
    "mnist_cnn": ["features.0.conv.weight", "features.0.conv.bias", "features.1.conv.weight",
                  "features.1.conv.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"],
    "cifar_cnn": ["features.0.conv.weight", "features.0.conv.bias", "features.1.conv.weight",
                  "features.1.conv.bias", "features.2.conv.weight", "features.2.conv.bias",
                  "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"],
}
SAVED_KEYS["cifar_seq"] = SAVED_KEYS["cifar_cnn"]


@pytest.mark.parametrize("name", list(SAVED_KEYS))
def test_state_dict_keys_of_existing_models_are_unchanged(name):
    assert list(build_model(name, MODELS[name].reference_shape, 10).state_dict()) == SAVED_KEYS[name]
