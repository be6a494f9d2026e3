"""The run's BatchLoaders: the training and test splits, --val-split's images, and the test set's
parts that --target-acc's evaluations within an epoch read (engine.target's SCREEN_PARTS)."""

import torch

from engine.config import Config
from engine.data import Dataset, InputSpec
from engine.data.stream import READ_AHEAD, Rows, take
from engine.distributed import Ranks
from engine.loader import BatchLoader
from engine.memory import size_text
from engine.runtime import Runtime
from engine.target import SCREEN_PARTS, screened


def loaders(cfg: Config, data: Dataset, spec: InputSpec, runtime: Runtime, ranks: Ranks, say=print):
    """(train, test) BatchLoaders on the run's device: this rank's part of each split; a split that
    does not fit streams from the decode cache (engine.loader), said in one line."""
    train = BatchLoader(data.train_x, data.train_y, cfg.batch_size, spec.mean, spec.std, device=runtime.device,
                        train=True, flip=spec.flip and cfg.flip, seed=cfg.seed, channels_last=cfg.channels_last,
                        crop_padding=cfg.crop_padding, padding_mode=cfg.crop_padding_mode, rank=ranks.rank, world=ranks.world,
                        resized_crop=cfg.resized_crop)
    test = eval_loader(cfg, data.test_x, data.test_y, spec, runtime, ranks)
    streamed = [(name, x) for name, x, loader in (("train", data.train_x, train), ("test", data.test_x, test)) if loader.why]
    if streamed and ranks.is_main:
        images = " and ".join(f"{len(x):,} {name}" for name, x in streamed)
        size = sum(len(x) * x[:1].numel() for _, x in streamed)  # uint8: one byte a value
        where = "the memory-mapped decode cache" if isinstance(streamed[0][1], Rows) else "host memory"
        say(f"Streaming {images} images ({size_text(size)}) from {where}, {READ_AHEAD} batches read ahead: "
            f"{(train if train.why else test).why}")
    return train, test


def screen_loaders(cfg: Config, data: Dataset, spec: InputSpec, runtime: Runtime, ranks: Ranks):
    """The test set as --target-acc's evaluations within an epoch read it: one BatchLoader for each of
    engine.target's SCREEN_PARTS (image i in the part that holds i % 10, so a test set in class order
    gives each class its share), batched as the test loader is; None for a small test set."""
    if not screened(len(data.test_x)):
        return None
    residue = torch.arange(len(data.test_x)) % 10
    parts = [torch.isin(residue, torch.tensor(part)).nonzero()[:, 0] for part in SCREEN_PARTS]
    return [eval_loader(cfg, take(data.test_x, rows), data.test_y[rows], spec, runtime, ranks) for rows in parts]


def eval_loader(cfg: Config, x, y, spec: InputSpec, runtime: Runtime, ranks: Ranks):
    """A BatchLoader that evaluates images x (N, C, H, W) uint8 with labels y (N,): this rank's part,
    in order, in batches of --eval-batch-size (default --batch-size), each of one shape."""
    return BatchLoader(x, y, cfg.eval_batch_size or cfg.batch_size, spec.mean, spec.std, device=runtime.device,
                       train=False, channels_last=cfg.channels_last, rank=ranks.rank, world=ranks.world)
