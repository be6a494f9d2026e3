"""Datasets as uint8 tensors: what a dataset is, where it comes from, and its statistics.

`load_dataset(cfg)` picks the reader for `--data` (built-in synthetic set, torchvision's on-disk
formats, or an image folder/archive), applies the seeded `--limit-*` subsets and returns a
`Dataset` whose splits are whole (N, C, H, W) uint8 tensors. `Dataset.spec()` is the part a
checkpoint keeps, so eval and export rebuild the model and its normalisation without the data.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from engine.config import BUILTIN_DATASETS, Config
from engine.errors import UsageError


@dataclass
class Dataset:
    name: str
    classes: list
    train_x: torch.Tensor  # (N, C, H, W) uint8
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor  # (M, C, H, W) uint8
    test_y: torch.Tensor  # (M,) int64
    flip: bool  # horizontal flips keep the label (natural images; not digits)

    @property
    def shape(self):
        return tuple(self.train_x.shape[1:])

    def spec(self):
        """Plain values a checkpoint stores to rebuild the model and its input pipeline."""
        mean, std = channel_stats(self.train_x)
        return {"name": self.name, "classes": list(self.classes), "shape": list(self.shape),
                "mean": mean, "std": std, "flip": self.flip}

    def limit(self, limit_train=None, limit_test=None, seed=0):
        """Seeded random subsets of at most `limit_*` images (the same subset for the same seed)."""
        self.train_x, self.train_y = _subset(self.train_x, self.train_y, limit_train, seed)
        self.test_x, self.test_y = _subset(self.test_x, self.test_y, limit_test, seed + 1)
        return self


def _subset(x, y, limit, seed):
    if limit is None or limit >= len(x):
        return x, y
    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(x), generator=generator)[:limit].sort().values
    return x[keep], y[keep]


def channel_stats(x):
    """Per-channel mean and std of uint8 images, in [0, 1] units, exactly, via 256-bin histograms."""
    values = torch.arange(256, dtype=torch.float64) / 255
    mean, std = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        n = counts.sum()
        m = (counts * values).sum() / n
        var = (counts * (values - m) ** 2).sum() / n
        mean.append(round(m.item(), 6))
        std.append(round(max(var.sqrt().item(), 1e-3), 6))  # a constant channel must not divide by 0
    return mean, std


ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


def dataset_label(data):
    """A short name for `--data`: the built-in name, or the folder/archive name without suffix."""
    if data in BUILTIN_DATASETS:
        return data
    name = Path(data.rstrip("/\\")).name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_dataset(cfg: Config, log=print) -> Dataset:
    """The dataset `cfg.data` names, with `--limit-*` applied."""
    if cfg.data == "synthetic":
        from engine import synthetic

        log(f"Data: built-in synthetic set ({synthetic.describe()}, seed {cfg.seed}); pass --data for real images")
        data = synthetic.generate(cfg.seed)
    elif cfg.data == "cifar10":
        from engine import formats

        data = formats.read_cifar10(cfg.data_dir, log)
    elif cfg.data in ("mnist", "fashion_mnist"):
        from engine import formats

        data = formats.read_mnist(cfg.data_dir, cfg.data, log)
    else:
        from engine import imagefolder

        data = imagefolder.read(cfg.data, cfg.resolved_cache_dir(), log)
    return data.limit(cfg.limit_train, cfg.limit_test, cfg.seed)


def check_batch_size(data: Dataset, batch_size):
    if batch_size > len(data.train_x):
        raise UsageError(
            f"--batch-size {batch_size} is larger than the {len(data.train_x):,} training images; "
            "use a smaller --batch-size or more data"
        )
