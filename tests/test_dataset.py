"""engine.data.dataset: exact channel statistics, seeded subsets and the names `--data` goes by."""

import pytest
import torch

from engine.data.dataset import Dataset, channel_stats, dataset_label
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


def test_hold_out_moves_a_seeded_split_out_of_the_training_images():
    x = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1)  # each image's value is its id
    y = torch.arange(100) % 2
    make = lambda: Dataset("d", ["a", "b"], x.clone(), y.clone(), x[:10].clone(), y[:10].clone(), flip=False)  # noqa: E731
    a, b, c = make().hold_out(20, seed=4), make().hold_out(20, seed=4), make().hold_out(20, seed=5)
    train_ids, val_ids = set(a.train_x.flatten().tolist()), set(a.val_x.flatten().tolist())
    assert len(val_ids) == 20 and len(train_ids) == 80
    assert not train_ids & val_ids and train_ids | val_ids == set(range(100))  # disjoint, nothing lost
    assert torch.equal(a.val_x.flatten().long() % 2, a.val_y)  # images stay with their labels
    assert torch.equal(a.val_x, b.val_x) and not torch.equal(a.val_x, c.val_x)
    assert make().hold_out(None).val_x is None
    with pytest.raises(UsageError, match="--val-split 100 leaves no training images"):
        make().hold_out(100)
    with pytest.raises(UsageError, match=r"--val-split 100% \(100 images\) leaves no training images"):
        make().hold_out(100, given="100%")  # as typed, with the count it means


def test_a_val_split_never_takes_every_image_of_a_rare_class():
    """A random draw that took every image of a rare class into the validation split would train a
    classifier that never saw it; the stratified draw (engine.data.holdout) leaves one in every seed."""
    x = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1)
    y = torch.cat([torch.arange(98) % 2, torch.tensor([2, 2])])  # class c: the last two images
    make = lambda: Dataset("d", ["a", "b", "c"], x.clone(), y.clone(), x[:10].clone(), y[:10].clone(), flip=False)  # noqa: E731
    for seed in range(20):
        held = make().hold_out(50, seed=seed, given="50%")
        assert torch.bincount(held.train_y).tolist() == [24, 25, 1] or torch.bincount(held.train_y).tolist() == [25, 24, 1]
