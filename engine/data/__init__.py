"""Datasets as uint8 tensors: `load_dataset(cfg)` picks the reader for `--data` and applies `--limit-*`.

The readers are the built-in synthetic set (`synthetic`), torchvision's on-disk formats (`formats`)
and image folders or archives (`imagefolder`); each builds a `dataset.Dataset` and is imported only
when its data is asked for, so importing this package reads nothing and loads no reader.
"""

from pathlib import Path

from engine.config import BUILTIN_DATASETS, Config
from engine.data.dataset import ARCHIVE_SUFFIXES, Dataset, InputSpec, channel_stats, dataset_label
from engine.errors import UsageError

__all__ = ["ARCHIVE_SUFFIXES", "Dataset", "InputSpec", "channel_stats", "check_batch_size", "dataset_label", "load_dataset"]


COLOUR_AS_GRAY = "Colour images, read as gray (PIL's luma) for a model of gray images, as engine predict reads them"


def load_dataset(cfg: Config, log=print, gray=False) -> Dataset:
    """The dataset `cfg.data` names, with `--val-split` held out of its training images, then `--limit-*` applied.
    gray: for a model of gray images: an image folder of colour images is read again as gray, each image
    converted before it is fitted to --image-size, as engine predict reads a photo (cached apart)."""
    if cfg.data in BUILTIN_DATASETS and (cfg.image_size or cfg.test_split not in (None, "all")):  # all: layout.WHOLE
        raise UsageError(f"--image-size and --test-split are for image folders; {cfg.data} has its own size and test set")
    if cfg.data in BUILTIN_DATASETS and Path(cfg.data).exists():  # a user's own ./cifar10 folder, easily taken for it
        log(f"Note: --data {cfg.data} names the built-in set, not the {'folder' if Path(cfg.data).is_dir() else 'file'} "
            f"{cfg.data} here, which is not read; give --data ./{cfg.data} for your own images")
    if cfg.data == "synthetic":
        from engine.data import synthetic

        log(f"Data: built-in synthetic set ({synthetic.describe()}, seed {cfg.seed}); pass --data for real images")
        data = synthetic.generate(cfg.seed)
    elif cfg.data == "cifar10":
        from engine.data import formats

        data = formats.read_cifar10(cfg.data_dir, log)
    elif cfg.data in ("mnist", "fashion_mnist"):
        from engine.data import formats

        data = formats.read_mnist(cfg.data_dir, cfg.data, log)
    else:
        from engine.data import imagefolder
        from engine.pixels import parse_image_size

        size = parse_image_size(cfg.image_size) if cfg.image_size else None
        data = imagefolder.read(cfg.data, cfg.resolved_cache_dir(), log, size, cfg.test_split, cfg.seed, cfg.resize)
        if gray and data.shape[0] == 3:  # its lines said above; luma after the resize would differ (clipped overshoot)
            data = imagefolder.read(cfg.data, cfg.resolved_cache_dir(), lambda *_: None, size, cfg.test_split, cfg.seed,
                                    cfg.resize, mode="L")
            log(COLOUR_AS_GRAY)
    # Held out before --limit-train, so the validation images do not depend on it.
    from engine.data.layout import parse_count

    count = parse_count(cfg.val_split, len(data.train_x), "--val-split") if cfg.val_split is not None else None
    data.hold_out(count, cfg.seed, cfg.val_split)
    for flag, limit, images, kind in (("train", cfg.limit_train, data.train_x, "training"),
                                      ("test", cfg.limit_test, data.test_x, "test")):
        if limit is not None and limit > len(images):
            log(f"Note: --limit-{flag} {limit:,} is more than the {len(images):,} {kind} images; all are used")
    had = set(data.train_y.tolist()) if cfg.limit_train is not None else set()
    data.limit(cfg.limit_train, cfg.limit_test, cfg.seed)
    lost = sorted(had - set(data.train_y.tolist()))  # a random subset, not a stratified one: said, not refused
    if lost:
        names = ", ".join(data.classes[i] for i in lost[:4]) + (" ..." if len(lost) > 4 else "")
        log(f"Note: --limit-train {cfg.limit_train:,} leaves {len(lost):,} of the {len(data.classes):,} classes with no "
            f"training images ({names}): the model cannot learn {'it' if len(lost) == 1 else 'them'}")
    return data


def check_batch_size(data: Dataset, batch_size, world=1):
    """One line where an epoch would have no step: a batch (per process, times `world` processes)
    larger than the training images."""
    if batch_size * world > len(data.train_x):
        per = f" x {world} processes = {batch_size * world}" if world > 1 else ""
        raise UsageError(
            f"--batch-size {batch_size}{per} is larger than the {len(data.train_x):,} training image{'s' if len(data.train_x) != 1 else ''}; "
            f"use a smaller --batch-size{f' (at most {most})' if (most := len(data.train_x) // world) else ''} or more data"
        )
