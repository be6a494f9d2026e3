"""engine.data: statistics, seeded subsets, naming, dispatch and the batch-size check."""

import pytest
import torch

from engine.config import Config
from engine.data import Dataset, channel_stats, check_batch_size, dataset_label, load_dataset
from engine.errors import UsageError


def test_channel_stats_are_exact():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (50, 3, 7, 5), dtype=torch.uint8)
    mean, std = channel_stats(x)
    f = x.double() / 255
    assert mean == pytest.approx(f.mean((0, 2, 3)).tolist(), abs=1e-6)
    assert std == pytest.approx(f.std((0, 2, 3), unbiased=False).tolist(), abs=1e-6)
    assert channel_stats(torch.zeros(4, 1, 2, 2, dtype=torch.uint8))[1] == [0.001]  # never divide by zero


def test_limits_take_a_seeded_subset_with_labels_aligned():
    x = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1)
    make = lambda: Dataset("d", ["a", "b"], x.clone(), torch.arange(100), x[:40].clone(), torch.arange(40), flip=False)  # noqa: E731
    a = make().limit(10, 5, seed=1)
    b = make().limit(10, 5, seed=1)
    c = make().limit(10, 5, seed=2)
    assert len(a.train_x) == 10 and len(a.test_x) == 5
    assert torch.equal(a.train_y, b.train_y) and not torch.equal(a.train_y, c.train_y)
    assert torch.equal(a.train_x.flatten().long(), a.train_y)
    assert len(make().limit(1000, None).train_x) == 100  # a limit above the size keeps everything


def test_dataset_labels():
    assert dataset_label("cifar10") == "cifar10"
    assert dataset_label("../shared/datasets/cifar10-jpeg.tar.gz") == "cifar10-jpeg"
    assert dataset_label("/data/pets/") == "pets"
    assert dataset_label("digits.zip") == "digits"


def test_load_dataset_synthetic_with_limits_and_spec():
    data = load_dataset(Config(limit_train=300, limit_test=50), log=lambda *_: None)
    assert data.train_x.shape == (300, 3, 32, 32) and data.test_x.shape == (50, 3, 32, 32)
    spec = data.spec()
    assert spec["shape"] == [3, 32, 32] and len(spec["classes"]) == 10 and spec["flip"]
    assert all(0 < m < 1 for m in spec["mean"]) and all(0 < s < 1 for s in spec["std"])


def test_batch_larger_than_the_data_is_refused():
    data = load_dataset(Config(limit_train=100, limit_test=10), log=lambda *_: None)
    check_batch_size(data, 100)
    with pytest.raises(UsageError, match="--batch-size 101 is larger than the 100 training images"):
        check_batch_size(data, 101)
