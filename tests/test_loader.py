"""engine.loader: batches keep labels with their images; crops, flips, shuffles and padding are right."""

import pytest
import torch
import torch.nn.functional as F

from engine.errors import UsageError
from engine.loader import BatchLoader, epoch_generator, random_crop, random_flip


def labelled_images(n=50, size=12, channels=3):
    """Image i is filled with value 10 + i % 200 and has label i, so every batch can be checked."""
    x = (10 + torch.arange(n) % 200).to(torch.uint8).view(n, 1, 1, 1).expand(n, channels, size, size).contiguous()
    return x, torch.arange(n)


def unnormalised(loader, x):
    """Invert the loader's normalisation (back to 0..255 values)."""
    norm = loader.normalize
    return ((x - norm.shift) / norm.byte_scale).round()


def test_train_batches_keep_labels_with_their_images_and_cover_the_epoch_once():
    x, y = labelled_images()
    loader = BatchLoader(x, y, 8, [0.5] * 3, [0.25] * 3, device="cpu", train=True, seed=3)
    assert len(loader) == 6  # 50 // 8: the partial batch is dropped
    seen = []
    for images, labels, count in loader.epoch(0):
        assert images.shape == (8, 3, 12, 12) and images.dtype == torch.float32 and count == 8
        assert images.is_contiguous(memory_format=torch.channels_last)
        raw = unnormalised(loader, images)
        centre = raw[:, 0, 6, 6]  # a crop shifts by at most 4 px, so the centre is always the image
        assert torch.equal(centre, (10 + labels % 200).float())
        seen += labels.tolist()
    assert len(seen) == len(set(seen)) == 48


def test_shuffle_is_seeded_by_seed_and_epoch():
    x, y = labelled_images()
    order = lambda seed, epoch: [b[1].tolist() for b in BatchLoader(x, y, 10, [0] * 3, [1] * 3, device="cpu",  # noqa: E731
                                                                    train=True, seed=seed).epoch(epoch)]
    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2)
    assert order(0, 1) != order(1, 1)
    assert torch.equal(torch.randperm(9, generator=epoch_generator(5, 2)), torch.randperm(9, generator=epoch_generator(5, 2)))


def test_skip_resumes_mid_epoch_with_the_same_batches():
    x, y = labelled_images()
    loader = BatchLoader(x, y, 8, [0] * 3, [1] * 3, device="cpu", train=True, seed=1)
    full = list(loader.epoch(4))
    rest = list(loader.epoch(4, skip=2))
    assert len(rest) == len(full) - 2
    for (a, la, _), (b, lb, _) in zip(full[2:], rest):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_crop_is_a_window_of_the_zero_padded_image():
    torch.manual_seed(0)
    x = torch.randint(1, 256, (6, 2, 7, 9), dtype=torch.uint8)  # no zeros: padding is recognisable
    shifts = torch.tensor([[0, 0], [8, 8], [4, 4], [0, 8], [3, 5], [8, 1]])
    out = random_crop(x, shifts, 4)
    padded = F.pad(x, (4, 4, 4, 4))
    for i, (dy, dx) in enumerate(shifts.tolist()):
        assert torch.equal(out[i], padded[i, :, dy:dy + 7, dx:dx + 9])
    assert torch.equal(out[2], x[2])  # shift (4, 4) is the identity
    assert (out[0, :, :4, :] == 0).all() and (out[0, :, 4:, 4:] == x[0, :, :3, :5]).all()


def test_reflect_crop_mirrors_the_image_at_its_edges():
    x = torch.randint(0, 256, (3, 2, 6, 5), dtype=torch.uint8)
    shifts = torch.tensor([[0, 0], [2, 2], [4, 1]])
    out = random_crop(x, shifts, 2, "reflect")
    assert torch.equal(out[1], x[1])  # shift (2, 2) is the identity
    # shift (0, 0): the window starts 2 pixels above and left; reflected rows/columns -2, -1 are 2, 1
    rows, cols = [2, 1, 0, 1, 2, 3], [2, 1, 0, 1, 2]
    assert torch.equal(out[0], x[0][:, rows][:, :, cols])
    rows, cols = [2, 3, 4, 5, 4, 3], [1, 0, 1, 2, 3]  # shift (4, 1): rows 6, 7 reflect to 4, 3
    assert torch.equal(out[2], x[2][:, rows][:, :, cols])


@pytest.mark.parametrize("mode", ["reflect", "zeros"])
def test_crop_padding_needs_images_wider_than_it(mode):
    # reflection cannot pad past the image; with zeros a crop could miss the image entirely
    x, y = labelled_images(n=8, size=4, channels=1)
    with pytest.raises(UsageError, match="--crop-padding 4 needs images larger than 4 pixels a side, not 4: .* most 3"):
        BatchLoader(x, y, 8, [0], [1], device="cpu", train=True, crop_padding=4, padding_mode=mode)
    BatchLoader(x, y, 8, [0], [1], device="cpu", train=True, crop_padding=3, padding_mode=mode)  # fits
    BatchLoader(x, y, 8, [0], [1], device="cpu", train=False, crop_padding=4, padding_mode=mode)  # evaluation: no crops


def test_random_shifts_stay_inside_the_padding():
    x, y = labelled_images(n=64, size=8, channels=1)
    loader = BatchLoader(x, y, 64, [0], [1], device="cpu", train=True, flip=False, seed=0)
    images, labels, _ = next(loader.epoch(0))
    raw = unnormalised(loader, images)[:, 0]  # (64, 8, 8)
    for image, label in zip(raw, labels):
        filled = (image != 0).nonzero()
        rows, cols = filled[:, 0], filled[:, 1]
        # At most 4 rows and columns of padding show, and the rest is one solid block of the image.
        assert 4 <= rows.max() - rows.min() + 1 <= 8 and 4 <= cols.max() - cols.min() + 1 <= 8
        assert len(filled) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert (image[image != 0] == 10 + label).all()


def test_flip_really_flips_and_only_where_asked():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.uint8).view(2, 3, 4, 5)
    out = random_flip(x, torch.tensor([True, False]))
    assert torch.equal(out[0, :, :, 0], x[0, :, :, 4]) and torch.equal(out[0], x[0].flip(-1))
    assert torch.equal(out[1], x[1])


def test_flips_happen_about_half_the_time_and_never_when_off():
    x = torch.zeros(400, 1, 4, 4, dtype=torch.uint8)
    x[:, :, :, 0] = 200  # a bright left column
    y = torch.zeros(400, dtype=torch.int64)
    for flip, low, high in ((True, 150, 250), (False, 0, 0)):
        loader = BatchLoader(x, y, 400, [0], [1], device="cpu", train=True, flip=flip, crop_padding=0, seed=0)
        images = unnormalised(loader, next(loader.epoch(0))[0])
        flipped = int((images[:, 0, 0, 3] == 200).sum())
        assert low <= flipped <= high


def test_eval_batches_are_ordered_padded_and_counted():
    x, y = labelled_images(n=21)
    loader = BatchLoader(x, y, 8, [0.2] * 3, [0.3] * 3, device="cpu", train=False)
    batches = list(loader.epoch(0))
    assert len(loader) == len(batches) == 3
    assert [c for _, _, c in batches] == [8, 8, 5]
    assert all(b.shape == (8, 3, 12, 12) for b, _, _ in batches)
    labels = torch.cat([lab[:c] for _, lab, c in batches])
    assert torch.equal(labels, y)
    first = unnormalised(loader, batches[0][0])
    assert torch.equal(first[:, 1, 0, 0], x[:8, 1, 0, 0].float())  # no crop, no flip in eval


def test_normalisation_uses_the_given_mean_and_std():
    x = torch.full((4, 2, 3, 3), 51, dtype=torch.uint8)  # 51 / 255 = 0.2
    loader = BatchLoader(x, torch.zeros(4, dtype=torch.int64), 4, [0.1, 0.2], [0.5, 0.25], device="cpu", train=False)
    images = next(loader.epoch(0))[0]
    assert torch.allclose(images[:, 0], torch.tensor(0.2))  # (0.2 - 0.1) / 0.5
    assert torch.allclose(images[:, 1], torch.tensor(0.0), atol=1e-6)


def test_ranks_take_disjoint_equal_shards_that_make_the_global_batches():
    x, y = labelled_images(n=70)
    single = BatchLoader(x, y, 16, [0] * 3, [1] * 3, device="cpu", train=True, seed=2)  # the global batch: 2 x 8
    ranks = [BatchLoader(x, y, 8, [0] * 3, [1] * 3, device="cpu", train=True, seed=2, rank=r, world=2) for r in (0, 1)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 4  # 70 // 16: the remainder (6 images) is dropped
    for epoch in (0, 3):
        shards = [list(loader.epoch(epoch)) for loader in ranks]
        for step, (images, labels, _) in enumerate(single.epoch(epoch)):
            (a, la, _), (b, lb, _) = shards[0][step], shards[1][step]
            assert torch.equal(torch.cat([la, lb]), labels)  # rank 0 then rank 1 make up the global batch
            assert torch.equal(torch.cat([a, b]), images)  # with the same crops and flips per image
        seen = [torch.cat([lab for _, lab, _ in shard]).tolist() for shard in shards]
        assert len(seen[0]) == len(seen[1]) == 32 and not set(seen[0]) & set(seen[1])


def test_rank_one_of_one_is_the_single_process_loader():
    x, y = labelled_images()
    a = BatchLoader(x, y, 8, [0] * 3, [1] * 3, device="cpu", train=True, seed=1)
    b = BatchLoader(x, y, 8, [0] * 3, [1] * 3, device="cpu", train=True, seed=1, rank=0, world=1)
    for (xa, ya, _), (xb, yb, _) in zip(a.epoch(2, skip=1), b.epoch(2, skip=1), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_eval_shards_count_every_image_once():
    x, y = labelled_images(n=23)
    labels, counts = [], []
    for rank in range(3):
        loader = BatchLoader(x, y, 4, [0] * 3, [1] * 3, device="cpu", train=False, rank=rank, world=3)
        batches = list(loader.epoch(0))
        assert len(loader) == len(batches) and all(b.shape[0] == 4 for b, _, _ in batches)  # one padded shape
        labels += [lab[:c] for _, lab, c in batches]
        counts.append(sum(c for _, _, c in batches))
    assert torch.equal(torch.cat(labels), y) and counts == [7, 8, 8]


def test_indices_dump_records_each_rank_s_batches(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGINE_LOADER_DUMP", str(tmp_path))
    x, y = labelled_images()
    loader = BatchLoader(x, y, 8, [0] * 3, [1] * 3, device="cpu", train=True, seed=4, rank=1, world=2)
    batches = [labels.tolist() for _, labels, _ in loader.epoch(5)]
    rows = [line.split() for line in (tmp_path / "indices-rank1.txt").read_text().splitlines()]
    assert [(int(r[0]), int(r[1])) for r in rows] == [(5, 0), (5, 1), (5, 2)]
    assert [[int(i) for i in r[2:]] for r in rows] == batches  # image i has label i


def flip_states(loader, epoch, x, skip=0):
    """{image index: mirrored?} for every image an epoch of `loader` trains on (after `skip` batches).
    Images of `asymmetric_images` carry their index in column 0 and (index + 1) in the last column."""
    states = {}
    for images, labels, _ in loader.epoch(epoch, skip=skip):
        raw = unnormalised(loader, images)[:, 0, 0]  # (B, W): the first row of channel 0
        for row, label in zip(raw, labels.tolist()):
            left, right = row[0].item(), row[-1].item()
            assert {left, right} == {label % 200, label % 200 + 1}
            states[label] = left == label % 200 + 1
    return states


def asymmetric_images(n=40, size=6):
    x = torch.full((n, 3, size, size), 250, dtype=torch.uint8)
    x[:, :, :, 0] = (torch.arange(n) % 200).view(n, 1, 1)
    x[:, :, :, -1] = (torch.arange(n) % 200 + 1).view(n, 1, 1)
    return x, torch.arange(n)


def test_alternate_flips_swap_every_image_between_consecutive_epochs():
    x, y = asymmetric_images()
    loader = BatchLoader(x, y, 8, [0] * 3, [1] * 3, device="cpu", train=True, seed=5, crop_padding=0, flip="alternate")
    epochs = [flip_states(loader, e, x) for e in range(4)]
    for before, after in zip(epochs, epochs[1:]):
        common = before.keys() & after.keys()  # 40 images, batches of 8: none dropped
        assert len(common) == 40 and all(before[i] != after[i] for i in common)
    assert 10 <= sum(epochs[0].values()) <= 30  # epoch 0: a random half, not all or none
    # seeded: the same seed gives the same states, another seed others
    again = BatchLoader(x, y, 8, [0] * 3, [1] * 3, device="cpu", train=True, seed=5, crop_padding=0, flip="alternate")
    assert flip_states(again, 3, x) == epochs[3]
    other = BatchLoader(x, y, 8, [0] * 3, [1] * 3, device="cpu", train=True, seed=6, crop_padding=0, flip="alternate")
    assert flip_states(other, 0, x) != epochs[0]


def test_random_flips_do_not_alternate_and_stay_the_default():
    """The default (True, or "random") keeps its draw: some image repeats its side between epochs,
    and the flips match the (seed, epoch) generator's third draw as before."""
    x, y = asymmetric_images()
    loader = BatchLoader(x, y, 8, [0] * 3, [1] * 3, device="cpu", train=True, seed=5, crop_padding=0)
    a, b = flip_states(loader, 0, x), flip_states(loader, 1, x)
    assert any(a[i] == b[i] for i in a)
    generator = epoch_generator(5, 0)
    torch.randperm(40, generator=generator), torch.randint(0, 1, (40, 2), generator=generator)
    drawn = torch.rand(40, generator=generator) < 0.5
    assert a == {i: bool(drawn[i]) for i in range(40)}


def test_alternate_flips_are_the_same_on_every_rank_and_after_a_skip():
    """Under DDP each rank's images carry the flips the single process gives them; a resumed epoch
    (skip) too: the states are a function of (seed, epoch, image) alone."""
    x, y = asymmetric_images(48)
    args = dict(device="cpu", train=True, seed=2, crop_padding=0, flip="alternate")
    single = flip_states(BatchLoader(x, y, 8, [0] * 3, [1] * 3, **args), 3, x)
    ranks = {}
    for rank in range(2):
        ranks.update(flip_states(BatchLoader(x, y, 4, [0] * 3, [1] * 3, rank=rank, world=2, **args), 3, x))
    assert ranks == single
    later = flip_states(BatchLoader(x, y, 8, [0] * 3, [1] * 3, **args), 3, x, skip=2)
    assert len(later) == 32 and later.items() <= single.items()


def test_alternate_flips_function():
    from engine.loader import alternate_flips

    base = alternate_flips(0, 0, 1000)
    assert torch.equal(alternate_flips(0, 2, 1000), base) and torch.equal(alternate_flips(0, 7, 1000), ~base)
    assert 400 < int(base.sum()) < 600
