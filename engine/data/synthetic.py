"""The built-in synthetic dataset: 10 classes of procedurally drawn shapes, 3x32x32, from a seed.

Each image is a shape (the class) drawn at a random place, size and colour on a random
background with pixel noise. Every shape is symmetric left to right, so horizontal flips keep
the label, and random crops keep the shape in view. It needs no files, is the same for the same
seed on every machine, and a small CNN learns it well above chance within one epoch.
"""

import torch

from engine.data.dataset import Dataset

CLASSES = ["disc", "ring", "square", "frame", "diamond", "plus", "cross", "hstripes", "vstripes", "triangle"]
TRAIN_SIZE, TEST_SIZE, SIDE = 10_000, 2_000, 32


def describe():
    return f"{len(CLASSES)} shapes, {TRAIN_SIZE:,} train / {TEST_SIZE:,} test, 3x{SIDE}x{SIDE}"


SHAPES = [  # (dx, dy, r, box, s) -> mask; offsets from the centre in pixels, s the half-size
    lambda dx, dy, r, box, s: r <= s,  # disc
    lambda dx, dy, r, box, s: (r <= s) & (r >= 0.55 * s),  # ring
    lambda dx, dy, r, box, s: box <= s,  # square
    lambda dx, dy, r, box, s: (box <= s) & (box >= 0.6 * s),  # frame
    lambda dx, dy, r, box, s: dx.abs() + dy.abs() <= s,  # diamond
    lambda dx, dy, r, box, s: ((dx.abs() <= s / 3) | (dy.abs() <= s / 3)) & (box <= s),  # plus
    lambda dx, dy, r, box, s: ((dx.abs() - dy.abs()).abs() <= s / 3) & (box <= s),  # cross
    lambda dx, dy, r, box, s: (torch.remainder(dy, 6) < 3) & (box <= s),  # horizontal stripes
    lambda dx, dy, r, box, s: (torch.remainder(dx.abs() + 1.5, 6) < 3) & (box <= s),  # vertical stripes
    lambda dx, dy, r, box, s: (dy.abs() <= s) & (dx.abs() <= (dy + s) / 2),  # triangle, apex up
]


def _masks(labels, dx, dy, size):
    """(N, H, W) bool: where each image's shape is, given its pixels' offsets from its centre."""
    mask = torch.zeros(dx.shape, dtype=torch.bool)
    for c, shape in enumerate(SHAPES):
        i = (labels == c).nonzero()[:, 0]
        x, y = dx[i], dy[i]
        mask[i] = shape(x, y, (x**2 + y**2).sqrt(), torch.maximum(x.abs(), y.abs()), size[i, None, None])
    return mask


def _draw(labels, generator):
    n = len(labels)
    uniform = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    centre = 16 + (uniform(n, 2) - 0.5) * 10  # (N, 2): the shape's centre, within 5 px of the middle
    size = 5 + uniform(n) * 5  # (N,) half-size 5..10 px
    grid = torch.arange(SIDE, dtype=torch.float32) + 0.5
    dx = grid[None, None, :] - centre[:, 0, None, None]  # (N, 1, W)
    dy = grid[None, :, None] - centre[:, 1, None, None]  # (N, H, 1)
    dx, dy = torch.broadcast_tensors(dx, dy)  # (N, H, W)
    mask = _masks(labels, dx, dy, size)[:, None]  # (N, 1, H, W)
    background = uniform(n, 3, 1, 1)
    # The shape's colour differs from the background by 0.2 to 0.6 on average: some are faint.
    offset = (0.2 + 0.4 * uniform(n, 1, 1, 1)) * torch.where(background.mean(1, keepdim=True) > 0.5, -1.0, 1.0)
    foreground = (background + offset + 0.15 * (uniform(n, 3, 1, 1) - 0.5)).clamp(0, 1)
    images = torch.where(mask, foreground, background)
    images = images + 0.1 * torch.randn(images.shape, generator=generator)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)  # (N, 3, H, W)


def generate(seed=0, train_size=TRAIN_SIZE, test_size=TEST_SIZE) -> Dataset:
    """The synthetic set for `seed`: balanced classes in a seeded order."""
    generator = torch.Generator().manual_seed(seed)
    splits = []
    for n in (train_size, test_size):
        labels = torch.arange(n) % len(CLASSES)
        labels = labels[torch.randperm(n, generator=generator)]
        chunks = [_draw(part, generator) for part in labels.split(2_000)]  # bounded memory
        splits += [torch.cat(chunks), labels]
    return Dataset("synthetic", list(CLASSES), *splits, flip=True)
