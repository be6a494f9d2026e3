"""What a dataset is: `Dataset`, whose splits are whole (N, C, H, W) uint8 tensors (or, for a set
too large for memory, engine.data.stream.Rows views of the file cache), its seeded `--limit-*`
subsets and `--val-split` hold-out, its exact per-channel statistics and the short name `--data`
goes by.

`Dataset.spec()` is the part a checkpoint keeps, so eval and export rebuild the model and its
normalisation without the data. The readers build a `Dataset` and depend on this module only.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from engine.config import BUILTIN_DATASETS
from engine.errors import UsageError
from engine.pixels import ARCHIVE_SUFFIXES

STATS_CHUNK = 4096  # images counted at a time: a streamed split is never read whole into memory


@dataclass
class InputSpec:
    """What a model's input is, as a checkpoint keeps it: eval, export and predict rebuild the input
    pipeline from it without the data."""

    name: str  # the dataset's short name
    classes: list  # class names, in logit order
    shape: list  # [C, H, W]
    mean: list  # per channel, in [0, 1] units
    std: list
    flip: bool  # horizontal flips keep the label (training augments with them; --tta uses them)


@dataclass
class Dataset:
    name: str
    classes: list
    train_x: torch.Tensor  # (N, C, H, W) uint8, or a streamed set's Rows view
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor  # (M, C, H, W) uint8
    test_y: torch.Tensor  # (M,) int64
    flip: bool  # horizontal flips keep the label (natural images; not digits)
    val_x: torch.Tensor | None = None  # (V, C, H, W) uint8: held out of the training images by hold_out
    val_y: torch.Tensor | None = None  # (V,) int64

    @property
    def shape(self):
        return tuple(self.train_x.shape[1:])

    def spec(self) -> InputSpec:
        """What a checkpoint stores to rebuild the model and its input pipeline."""
        mean, std = channel_stats(self.train_x)
        return InputSpec(self.name, list(self.classes), list(self.shape), mean, std, self.flip)

    def limit(self, limit_train=None, limit_test=None, seed=0):
        """Seeded random subsets of at most `limit_*` images (the same subset for the same seed)."""
        self.train_x, self.train_y = _subset(self.train_x, self.train_y, limit_train, seed)
        self.test_x, self.test_y = _subset(self.test_x, self.test_y, limit_test, seed + 1)
        return self


    def hold_out(self, count=None, seed=0, given=None):
        """Move a seeded, stratified `count` of the training images into the validation split (each class
        its share: engine.data.holdout; the same images for the same seed and training set); None keeps
        them all for training. `given`: the flag's value as typed (10%), for the one line that refuses a
        split leaving a class (or everything) untrained."""
        if count is None:
            return self
        said = f"--val-split {given}" + (f" ({count:,} images)" if str(given).strip().endswith("%") else "") \
            if given is not None else f"--val-split {count:,}"
        if count >= len(self.train_x):
            raise UsageError(f"{said} leaves no training images (the training set has {len(self.train_x):,}); hold out "
                             "fewer")
        from engine.data.holdout import stratified_count  # here: importing engine.data loads nothing more
        from engine.data.stream import take

        keep, val = stratified_count(self.train_y, count, seed + 2, self.classes, said)  # seed, +1: --limit-*'s
        self.val_x, self.val_y = take(self.train_x, val), self.train_y[val]  # index views of a streamed split
        self.train_x, self.train_y = take(self.train_x, keep), self.train_y[keep]
        return self


def _subset(x, y, limit, seed):
    if limit is None or limit >= len(x):
        return x, y
    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(x), generator=generator)[:limit].sort().values
    from engine.data.stream import take

    return take(x, keep), y[keep]


def channel_stats(x):
    """Per-channel mean and std of uint8 images, in [0, 1] units, exactly, via 256-bin histograms."""
    values = torch.arange(256, dtype=torch.float64) / 255
    histograms = torch.zeros(x.shape[1], 256, dtype=torch.int64)  # (C, 256): exact counts, summed chunk by chunk
    for start in range(0, len(x), STATS_CHUNK):
        chunk = x[start:start + STATS_CHUNK]  # (n, C, H, W): a streamed split is read a chunk at a time
        for c in range(x.shape[1]):
            histograms[c] += torch.bincount(chunk[:, c].reshape(-1), minlength=256)
    mean, std = [], []
    for c in range(x.shape[1]):
        counts = histograms[c].double()
        n = counts.sum()
        m = (counts * values).sum() / n
        var = (counts * (values - m) ** 2).sum() / n
        mean.append(round(m.item(), 6))
        std.append(round(max(var.sqrt().item(), 1e-3), 6))  # a constant channel must not divide by 0
    return mean, std


def dataset_label(data):
    """A short name for `--data`: the built-in name, or the folder/archive name without suffix."""
    if data in BUILTIN_DATASETS:
        return data
    name = Path(data.rstrip("/\\")).name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def file_label(label, limit=100):
    """`label` cut to at most `limit` bytes in a file name (UTF-8, a name in no UTF-8 by its bytes), so a run
    folder or decode cache named after it stays under the system's 255 bytes a name: a folder of 80 Chinese
    characters (240 bytes) made every run fail, 'File name too long', and every decode go uncached."""
    kept, size = [], 0
    for character in label:  # whole characters: a cut never splits one's bytes
        size += len(character.encode("utf-8", "surrogateescape"))
        if size > limit:
            break
        kept.append(character)
    return "".join(kept)
