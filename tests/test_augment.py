"""engine.augment: batched random-resized crops against their definition."""

import pytest
import torch
import torch.nn.functional as F

from engine.augment import draw_boxes, random_resized_crop


def test_the_whole_image_as_its_box_is_the_identity():
    x = torch.randint(0, 256, (3, 3, 7, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[1.0, 1.0, 0.0, 0.0]]).repeat(3, 1)
    assert torch.equal(random_resized_crop(x, boxes), x)  # uint8 in, uint8 out


def test_a_box_is_its_region_resized_back_with_bilinear_sampling():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]])  # the top-left and bottom-right quarters
    out = random_resized_crop(x, boxes)
    for i, (r, c) in enumerate([(0, 0), (4, 4)]):
        expected = F.interpolate(x[i:i + 1, :, r:r + 4, c:c + 4], size=(8, 8), mode="bilinear", align_corners=False)
        # inside, the same samples; on the box's far edge the crop reads the next pixel instead of repeating its own
        assert torch.allclose(out[i, :, 1:-2, 1:-2], expected[0, :, 1:-2, 1:-2], atol=1e-5)


def test_boxes_follow_torchvisions_ranges_and_the_seed():
    boxes = draw_boxes(20_000, torch.Generator().manual_seed(3), scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3))
    height, width, top, left = boxes.unbind(1)
    area, aspect = height * width, width / height
    assert area.min() >= 0.2 - 1e-6 and area.max() <= 1 + 1e-6
    unclamped = (height < 1) & (width < 1)
    assert aspect[unclamped].min() >= 3 / 4 - 1e-4 and aspect[unclamped].max() <= 4 / 3 + 1e-4
    assert (top >= 0).all() and (top + height <= 1 + 1e-6).all() and (left + width <= 1 + 1e-6).all()
    again = draw_boxes(20_000, torch.Generator().manual_seed(3), scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3))
    assert torch.equal(boxes, again)


def test_the_loader_crops_by_seed_and_epoch_and_leaves_runs_without_it_unchanged():
    from engine.loader import BatchLoader

    x = torch.randint(0, 256, (64, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    y = torch.arange(64) % 4

    def batches(**kwargs):
        loader = BatchLoader(x, y, 16, [0.5] * 3, [0.25] * 3, device="cpu", train=True, seed=7, **kwargs)
        return [b for b, _, _ in loader.epoch(1)]

    plain, again, resized = batches(), batches(resized_crop=None), batches(resized_crop=0.4)
    assert all(torch.equal(a, b) for a, b in zip(plain, again))
    assert not any(torch.equal(a, b) for a, b in zip(plain, resized))
    assert all(torch.equal(a, b) for a, b in zip(resized, batches(resized_crop=0.4)))  # seeded: resumable
    assert all(b.shape == (16, 3, 12, 12) and torch.isfinite(b).all() for b in resized)
    # normalised like every batch: the loader's mean and std (0.5, 0.25) put pixels in [-2, 2]
    assert all(b.abs().max() <= 2.0 + 1e-5 for b in resized)


@pytest.mark.slow
def test_alternate_flips_asked_for_on_gray_images_are_said_not_ignored(tmp_path):
    """Single-channel sets train without flips (digits); --flip alternate on them did nothing silently."""
    import numpy as np
    from PIL import Image

    from engine.config import Config
    from engine.train import train

    rng = np.random.default_rng(0)
    for label, name in enumerate(("dark", "light")):
        (tmp_path / "gray" / name).mkdir(parents=True)
        for i in range(12):
            Image.fromarray((rng.integers(0, 120, (8, 8)) + label * 120).astype(np.uint8)).save(tmp_path / "gray" / name / f"{i}.png")
    flags = dict(data=str(tmp_path / "gray"), epochs=1, batch_size=8, amp=False, device="cpu", model="mlp",
                 cache_dir=str(tmp_path / "cache"), test_split="25%")
    for flip, said in (("alternate", True), ("random", False)):
        lines = []
        train(Config(out=str(tmp_path / flip), flip=flip, **flags), log=lines.append)
        assert any(line.startswith("--flip alternate: this data trains without flips") for line in lines) == said
