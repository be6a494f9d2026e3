"""torchvision's on-disk datasets, read directly: CIFAR-10 python pickles and MNIST idx files.

The layouts are torchvision's (`<data-dir>/cifar-10-batches-py/`, `<data-dir>/MNIST/raw/`,
`<data-dir>/FashionMNIST/raw/`), so a directory torchvision filled works here. The files are
parsed here rather than through torchvision's classes, which insist on the official MD5 sums,
so the same code reads tests' small fixtures. Where files are missing, torchvision's download
is tried once; offline, that fails with one line naming the alternatives.
"""

import gzip
import pickle
import shutil
from pathlib import Path

import numpy as np
import torch

from engine.data.dataset import Dataset
from engine.errors import EngineError

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
MNIST_DIRS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _download(name, data_dir, log):
    """torchvision's own download and extraction into `data_dir`; one line if it fails."""
    import torchvision.datasets as tvd

    cls = {"cifar10": tvd.CIFAR10, "mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST}[name]
    log(f"{name} not found in {data_dir}; trying torchvision's download")
    created = _first_missing(Path(data_dir))  # torchvision makes the folders (parents too) before it downloads
    try:
        for train in (True, False):
            cls(root=str(data_dir), train=train, download=True)
    except Exception as error:  # URLError, HTTPError, timeouts, MD5 mismatches: all mean "not here"
        if created is not None:  # a failed download leaves no folder behind that it made (it holds nothing usable)
            shutil.rmtree(created, ignore_errors=True)
        reason = getattr(error, "reason", None) or error
        lines = [line.strip() for line in str(reason).splitlines() if line.strip()] or [type(error).__name__]
        reason = lines[-1] if lines[0].endswith(":") else lines[0]  # torchvision puts the cause last
        raise EngineError(
            f"{name} is not in {data_dir} and the download failed ({reason}); put torchvision's files there "
            f"or pass --data-dir, or train on --data PATH (an image folder or .tar/.tar.gz/.zip) or --data synthetic"
        ) from None


def _first_missing(path: Path):
    """The outermost folder of `path` (itself or a parent) that does not exist yet, or None."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            return missing
        missing = folder
    return missing


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches' dicts of lists, bytes and numpy arrays, and nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # how protocol-2 pickles written by Python 3 store bytes

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path):
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError, AttributeError) as error:
        raise EngineError(f"{path} is not a CIFAR-10 batch ({error})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise EngineError(f"{path} is not a CIFAR-10 batch (data shape {data.shape}, {len(labels)} labels)")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def read_cifar10(data_dir, log=print) -> Dataset:
    root = Path(data_dir) / CIFAR10_DIR
    needed = CIFAR10_TRAIN + ["test_batch", "batches.meta"]
    if not all((root / name).is_file() for name in needed):
        _download("cifar10", data_dir, log)
    parts = [_read_cifar_batch(root / name) for name in CIFAR10_TRAIN]
    train_x, train_y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    test_x, test_y = _read_cifar_batch(root / "test_batch")
    try:
        with open(root / "batches.meta", "rb") as f:
            meta = _ArrayUnpickler(f, encoding="bytes").load()
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta[b"label_names"]]
    except (pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError, AttributeError) as error:
        raise EngineError(f"{root / 'batches.meta'} is not CIFAR-10's metadata ({error})") from None
    _check_labels(root, classes, train_y, test_y)
    return Dataset("cifar10", classes, train_x, train_y, test_x, test_y, flip=True)


def _open_idx(path: Path):
    """An idx file's bytes, from `path` or `path.gz`."""
    if path.is_file():
        return path.read_bytes()
    gz = path.with_name(path.name + ".gz")
    if gz.is_file():
        try:
            with gzip.open(gz) as f:
                return f.read()
        except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError; truncation is EOFError
            raise EngineError(f"{gz} is not a readable gzip file ({error or 'truncated'}); delete it to download again") from None
    return None


def parse_idx(raw: bytes, source):
    """An idx array (the MNIST format): magic 0x0000 0x08 <ndim>, big-endian int32 dims, uint8 data."""
    if len(raw) < 4 or raw[0:2] != b"\0\0" or raw[2] != 0x08 or raw[3] < 1:
        raise EngineError(f"{source} is not an idx file of unsigned bytes")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise EngineError(f"{source} ends inside its idx header")
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4).tolist()
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(raw) != expected:
        raise EngineError(f"{source} holds {len(raw):,} bytes; its header {dims} needs {expected:,}")
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
    return torch.from_numpy(data.copy())


def read_mnist(data_dir, name="mnist", log=print) -> Dataset:
    raw_dir = Path(data_dir) / MNIST_DIRS[name] / "raw"
    files = [raw_dir / f for split in ("train", "test") for f in MNIST_FILES[split]]
    blobs = [_open_idx(f) for f in files]
    if any(b is None for b in blobs):
        _download(name, data_dir, log)
        blobs = [_open_idx(f) for f in files]
    train_x, train_y, test_x, test_y = (parse_idx(b, f) for b, f in zip(blobs, files))
    for x, y, f in ((train_x, train_y, files[0]), (test_x, test_y, files[2])):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise EngineError(f"{f}: images {tuple(x.shape)} do not match labels {tuple(y.shape)}")
    classes = [str(d) for d in range(10)] if name == "mnist" else list(FASHION_CLASSES)
    train_y, test_y = train_y.long(), test_y.long()
    _check_labels(raw_dir, classes, train_y, test_y)
    return Dataset(name, classes, train_x[:, None], train_y, test_x[:, None], test_y, flip=False)


def _check_labels(where, classes, *labels):
    for y in labels:
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise EngineError(f"{where}: labels run outside the {len(classes)} classes")
