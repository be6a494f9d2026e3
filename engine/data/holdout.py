"""--val-split's draw: a seeded, stratified hold-out of an exact number of training images.

Each class gives its share of the count (count x n / N for a class of n of the N images, rounded by
largest remainder so the shares add up to the count, as sklearn's `stratify` allocates), with two
bounds: every class keeps at least one training image, and where the count is at least the number of
classes of two or more images, each of those gives at least one validation image (a class of 5 in a
set of 1,000 at 10% would otherwise give none). Which images a class gives is a seeded permutation,
so the same labels, count and seed hold out the same images (resume and eval rebuild them).
"""

import torch

from engine.errors import UsageError


def shares(sizes: torch.Tensor, count, ties: torch.Tensor):
    """How many images each class gives (int64, per class of `sizes` images) for `count` in all;
    `ties`: a random number per class, breaking equal remainders. The caller checks the count fits."""
    sizes = sizes.double()
    cap = sizes - 1  # each class keeps one image to train on
    exact = count * sizes / sizes.sum()
    low = torch.minimum(torch.ones_like(cap), cap) if count >= int((cap > 0).sum()) else torch.zeros_like(cap)
    take = torch.maximum(torch.minimum(exact.floor(), cap), low)
    ties = ties.double() * 1e-12  # remainders differ by at least 1/N where they differ at all
    while (gap := count - int(take.sum())) != 0:
        if gap > 0:  # the largest remainders first, among classes with images to spare
            key = torch.where(take < cap, exact - take + ties, torch.tensor(-float("inf"), dtype=torch.double))
        else:  # given back by the classes furthest above their share (the lower bound raised them)
            key = torch.where(take > low, take - exact + ties, torch.tensor(-float("inf"), dtype=torch.double))
        most = min(abs(gap), int(torch.isfinite(key).sum()))
        take[key.topk(most).indices] += 1 if gap > 0 else -1
    return take.long()


def stratified_count(labels: torch.Tensor, count, seed, classes, said):
    """(kept, held out): sorted index tensors holding out `count` of the images labelled `labels`, each
    class its share (see the module). `said`: the flag as typed, for the line refusing a count the
    classes cannot give while each keeps a training image."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    present, sizes = torch.unique(labels, return_counts=True)
    ties = torch.rand(len(present), generator=generator)
    spare = int((sizes - 1).sum())
    if count > spare:
        name = classes[int(present[sizes.argmin()])]
        raise UsageError(f"{said} leaves a class with no training images: its {len(present):,} classes can give "
                         f"{spare:,} while each keeps one (class {name} has {int(sizes.min()):,}); hold out fewer")
    take = shares(sizes, count, ties)
    by_class = order[torch.sort(labels[order], stable=True).indices]  # each class's images in the seeded order
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.arange(len(labels)) - torch.repeat_interleave(starts, sizes)
    held = rank < torch.repeat_interleave(take, sizes)
    return by_class[~held].sort().values, by_class[held].sort().values
