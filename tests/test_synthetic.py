"""engine.data.synthetic: deterministic, balanced, flip-symmetric and distinct per class."""

import torch

from engine.data.synthetic import CLASSES, SHAPES, generate


def test_same_seed_same_images_other_seed_other_images():
    a, b, c = generate(3, 200, 50), generate(3, 200, 50), generate(4, 200, 50)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x)


def test_shapes_sizes_and_balanced_classes():
    data = generate(0, 500, 100)
    assert data.train_x.shape == (500, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.classes == CLASSES and len(SHAPES) == len(CLASSES) == 10
    assert torch.bincount(data.train_y, minlength=10).tolist() == [50] * 10
    assert torch.bincount(data.test_y, minlength=10).tolist() == [10] * 10
    assert data.flip


def test_every_shape_is_mirror_symmetric_and_the_shapes_differ():
    side = torch.arange(32, dtype=torch.float32) + 0.5 - 16
    dx, dy = torch.broadcast_tensors(side[None, :], side[:, None])  # centred on the image
    r, box, s = (dx**2 + dy**2).sqrt(), torch.maximum(dx.abs(), dy.abs()), torch.tensor(9.0)
    masks = [shape(dx, dy, r, box, s) for shape in SHAPES]
    for mask in masks:
        assert torch.equal(mask, mask.flip(1))  # a horizontal flip keeps the label
        assert mask.sum() > 20
    for i in range(10):
        for j in range(i + 1, 10):
            assert not torch.equal(masks[i], masks[j])
