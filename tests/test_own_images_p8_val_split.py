"""--val-split drew its images at random from the whole training set, so on an imbalanced folder a
small class often gave no validation image at all (and a class of two could lose both to it): the
draw is stratified, each class its share of the exact count, every class keeping a training image."""

import pytest
import torch

from engine.data.dataset import Dataset
from engine.errors import UsageError


def data(sizes):
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    x = torch.arange(len(labels)).view(-1, 1, 1, 1)  # each image's value is its id
    names = [f"c{c}" for c in range(len(sizes))]
    return Dataset("d", names, x.clone(), labels, x[:4].clone(), labels[:4].clone(), flip=False)


def per_class(labels, classes):
    return torch.bincount(labels, minlength=classes).tolist()


def test_each_class_gives_its_share_of_the_validation_images():
    for seed in range(5):
        held = data([180, 90, 20, 6, 3, 1]).hold_out(30, seed=seed, given="10%")
        counts = per_class(held.val_y, 6)  # shares 18, 9, 2, 0.6, 0.3, 0.1: the small ones raised to 1, paid by one
        assert sum(counts) == 30 and counts[3:] == [1, 1, 0]  # of the large ones; the old draw often gave them 0
        assert sorted(a - b for a, b in zip(counts[:3], [18, 9, 2])) == [-1, 0, 0]
        assert per_class(held.train_y, 6)[5] == 1 and min(per_class(held.train_y, 6)) >= 1


def test_the_draw_is_seeded_and_keeps_images_with_their_labels():
    a, b, c = (data([50, 30, 20]).hold_out(10, seed=s) for s in (4, 4, 5))
    assert torch.equal(a.val_x, b.val_x) and not torch.equal(a.val_x, c.val_x)
    ids = set(a.train_x.flatten().tolist()) | set(a.val_x.flatten().tolist())
    assert ids == set(range(100)) and not set(a.train_x.flatten().tolist()) & set(a.val_x.flatten().tolist())
    assert torch.equal(data([50, 30, 20]).train_y[a.val_x.flatten()], a.val_y)


def test_many_tiny_classes_share_a_small_count_and_each_keeps_a_training_image():
    held = data([2] * 1000).hold_out(200, seed=0, given="10%")
    counts = per_class(held.val_y, 1000)
    assert sum(counts) == 200 and max(counts) == 1
    assert min(per_class(held.train_y, 1000)) == 1
    full = data([2] * 1000).hold_out(1000, seed=0, given="50%")  # every class gives one and keeps one
    assert per_class(full.val_y, 1000) == [1] * 1000 and per_class(full.train_y, 1000) == [1] * 1000


def test_a_count_the_classes_cannot_give_is_one_line():
    with pytest.raises(UsageError, match=r"--val-split 60% \(6 images\) leaves a class with no training images: its 3 "
                                         r"classes can give 5 while each keeps one \(class c2 has 1\); hold out fewer"):
        data([3, 4, 1]).hold_out(6, seed=0, given="60%")
