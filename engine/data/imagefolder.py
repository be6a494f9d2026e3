"""Image-folder datasets from a directory or an archive, in any layout engine.data.layout accepts.

Archives (.tar, .tar.gz, .tgz, .zip) are read member by member, never extracted. Images are
decoded once, on every core, into uint8 tensors (with `--image-size`, each fitted to it by
engine.pixels.fit and `--resize`: stretched, or shorter side to the size and the centre cropped) and cached as one tensor file in
the cache directory, keyed by the source's identity (path, size and modification time of every
file) and the image size, so the next start loads in about a second. A corrupt image is an error
that names it; nothing is half-written. Before decoding, the image count and size must fit in
memory, and every image is checked against the size limit by its header (engine.pixels).
"""

import hashlib
import io
import os
import sys
import tarfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from engine.checkpoint import save_atomic
from engine.data import filecache, layout, stream
from engine.data.dataset import ARCHIVE_SUFFIXES, Dataset, dataset_label
from engine.errors import EngineError, UsageError, first_line
from engine.lock import remove_stale_temporaries
from engine.pixels import SIXTEEN_BIT, check_size, fit

CACHE_FORMAT = 3  # 2: a set with any colour image is all RGB; 3: any layout, test split optional, --image-size
CHUNK = 1024  # images handed to the decoding processes at a time: bounds the undecoded bytes held in memory


def _archive_kind(path: Path):
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(ARCHIVE_SUFFIXES):  # .tar, .tar.gz, .tgz
        return "tar"
    return None


def _members(path: Path):
    """(name inside the source, bytes) for every file, in the source's own order."""
    kind = _archive_kind(path)
    if path.is_dir():
        for root, dirs, files in os.walk(path, followlinks=True):
            dirs.sort()
            for name in sorted(files):
                full = Path(root) / name
                yield full.relative_to(path).as_posix(), full.read_bytes
    elif kind == "zip":
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.is_dir():
                    yield info.filename, lambda info=info: archive.read(info)
    elif kind == "tar":
        with tarfile.open(path, "r:*") as archive:
            for info in archive:
                if info.isfile():
                    yield info.name, lambda info=info: archive.extractfile(info).read()
    else:
        raise EngineError(f"{path} is not a directory or a .tar, .tar.gz or .zip archive of an image folder")


def source_key(path: Path):
    """A digest of what the source is: its path and the size and mtime of each of its files."""
    digest = hashlib.sha256(f"{CACHE_FORMAT}:{path.resolve()}".encode())
    if path.is_dir():
        for root, dirs, files in os.walk(path, followlinks=True):
            dirs.sort()
            for name in sorted(files):
                st = os.stat(Path(root) / name)
                digest.update(f"{Path(root, name).relative_to(path)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    else:
        st = path.stat()
        digest.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


GRAY_MODES = ("L", "1", "F", *SIXTEEN_BIT)


def _decode(item):
    """(H, W) uint8 for a grayscale image, (H, W, 3) for any other, from (name, bytes, image size or None);
    with an image size, resized to it by engine.pixels.fit. Runs in the decoding processes."""
    from PIL import Image, UnidentifiedImageError

    name, data, size, rule = item
    Image.MAX_IMAGE_PIXELS = None  # check_size refuses large ones, naming the size
    try:
        with Image.open(io.BytesIO(data)) as image:
            check_size(image, name)  # by its header, before a pixel is decoded
            return np.asarray(fit(image, size, "L" if image.mode in GRAY_MODES else "RGB", rule))  # 16-bit scaled
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise EngineError(f"cannot decode image {name}: {error}") from None


def _chunks(path: Path, size, rule):
    """Lists of (split, class, (name, bytes, size, rule)) of at most CHUNK images, in the source's order."""
    chunk = []
    for name, read in _members(path):
        where = layout.place(name)
        if where is None:
            continue
        chunk.append((*where, (f"{path}:{name}" if path.is_file() else str(path / name), read(), size, rule)))
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def available_memory():
    """Bytes the kernel could give this process without swapping (MemAvailable), or None; at most
    ENGINE_MEMORY_LIMIT where that test setting is given (engine.memory)."""
    from engine.memory import memory_limit

    limit = memory_limit()
    available = _available_memory()
    return available if limit is None else limit if available is None else min(limit, available)


def _available_memory():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class DoesNotFit(EngineError):
    """check_memory's finding that a source's decoded images would not fit in memory: `read` then
    decodes it into the file cache (engine.data.filecache) instead."""

    def __init__(self, message, count, size, channels):
        super().__init__(message)
        self.count, self.size, self.channels = count, size, channels  # images, (H, W), 1 or 3


def check_memory(path: Path, size=None):
    """The source's image count; raises DoesNotFit, before decoding, for a source whose decoded images
    would not fit in memory: the count times the first image's size (or `size`, H x W), twice over
    while they are stacked."""
    from PIL import Image, UnidentifiedImageError

    count, first = 0, None
    for name, read in _members(path):
        if layout.place(name) is None:
            continue
        count += 1
        if first is None:
            try:
                with Image.open(io.BytesIO(read())) as image:
                    check_size(image, f"{path}:{name}" if path.is_file() else str(path / name))
                    first = (*image.size, 1 if image.mode in GRAY_MODES else 3)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
                first = ()  # the decoding pass names the bad file
    available = available_memory()
    if not first or available is None:
        return count
    width, height, channels = first
    if size is not None:
        height, width = size
    need = 2 * count * width * height * channels
    if need > available:
        raise DoesNotFit(f"{path}: decoding its {count:,} images of {width}x{height}x{channels} needs about "
                         f"{need / 1e9:,.1f} GB of memory, and {available / 1e9:,.1f} GB is available; "
                         "use fewer or smaller images (--image-size), or a machine with more memory",
                         count, (height, width), channels)
    return count


def decode_folder(path: Path, log=print, size=None, rule="stretch"):
    """Decode every image once, on every core: {"classes", "train_x", "train_y"} and, where the source
    has an evaluation split, "test_x", "test_y". `size` (H, W): resize each image to it (engine.pixels.fit)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from PIL import Image
    from tqdm import tqdm

    found = {}  # split (None: no split) -> class -> [arrays]
    bomb_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # check_size refuses large ones, naming the size
    workers = max(1, min(os.cpu_count() or 1, 32))
    pool = ProcessPoolExecutor(workers, mp_context=get_context("fork")) if workers > 1 else None
    started, sizes = time.perf_counter(), {}
    try:
        total = check_memory(path, size)
        log(f"Decoding {path}{f' at {size[0]}x{size[1]}' if size else ''} (first use only; the result is cached)")
        with tqdm(total=total, desc="Decoding", unit=" img", disable=not sys.stderr.isatty(), leave=False) as progress:
            for chunk in _chunks(path, size, rule):
                items = [item for _, _, item in chunk]
                arrays = list(pool.map(_decode, items, chunksize=64)) if pool else [_decode(i) for i in items]
                for (split, name, item), array in zip(chunk, arrays):
                    sizes.setdefault(array.shape[:2], item[0])
                    found.setdefault(split, {}).setdefault(name, []).append(array)
                progress.update(len(chunk))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        reason = first_line(error).rstrip(":")  # tarfile lists every method tried
        raise EngineError(f"{path} is not a readable archive ({reason})") from None
    except OSError as error:
        raise EngineError(f"cannot read {path}: {error}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = bomb_limit
        if pool:
            pool.shutdown(cancel_futures=True)
    if len(sizes) > 1:
        (a, first), (b, other) = list(sizes.items())[:2]
        raise UsageError(f"{path}: images differ in size ({a[1]}x{a[0]} {first}, {b[1]}x{b[0]} {other}); all images "
                         "must share one size: pass --image-size S (or HxW) to resize them once, shorter side to S")
    seconds = time.perf_counter() - started
    count = sum(len(v) for classes in found.values() for v in classes.values())
    log(f"Decoded {count:,} images in {seconds:.1f} s ({count / max(seconds, 1e-9):,.0f} img/s on {workers} "
        f"process{'es' if workers > 1 else ''})")
    train, test, classes = split_classes(found, path, log)
    colour = any(a.ndim == 3 for part in (train, test or {}) for images in part.values() for a in images)
    result = {"classes": classes}
    for split, part in (("train", train), ("test", test)):
        if part is None:
            continue
        arrays, labels = [], []
        for index, name in enumerate(classes):
            images = part.get(name, [])
            if colour:  # one colour image makes the whole set RGB (grey replicated, as PIL does)
                images = [a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2) for a in images]
            arrays += images
            labels += [index] * len(images)
        x = torch.from_numpy(np.stack(arrays))
        x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        result[f"{split}_x"] = x.contiguous()
        result[f"{split}_y"] = torch.tensor(labels, dtype=torch.int64)
    return result


def split_classes(found, path, log):
    """(train {class: items}, test {class: items} or None, sorted class names) of what a decode found
    ({split or None: {class: [items]}}), checked: no empty class folder, no test class train lacks,
    at least 2 classes. engine.data.filecache checks its decode with it too."""
    train, test, named = layout.choose(found, path, log)
    empty = layout.empty_classes(path, found)
    if empty:
        raise EngineError(f"{path}: class folder {empty[0]} has no images{f' (nor {len(empty) - 1} more)' if len(empty) > 1 else ''}; "
                          "add images or remove the folder")
    classes = sorted(train)
    if test is not None:
        missing = sorted(set(test) - set(classes))
        if missing:
            raise EngineError(f"{path}: {named}/ has classes that train/ lacks: {', '.join(missing)}")
    if len(classes) < 2:
        raise EngineError(f"{path} has {len(classes)} class; a classifier needs at least 2 ({layout.LAYOUT})")
    return train, test, classes


def read(source, cache_dir: Path, log=print, image_size=None, test_split=None, seed=0, resize="stretch") -> Dataset:
    """The image folder or archive at `source`, decoded once (resized to `image_size` (H, W) if given)
    and then loaded from the cache. A source without an evaluation split gets its test set held out
    by `test_split` (a percentage; default 10%), seeded and stratified (engine.data.layout)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise EngineError(f"--data {source}: no such file or directory (give an image folder or a .tar/.tar.gz/.zip of one)")
    if not path.is_dir() and _archive_kind(path) is None:
        raise EngineError(f"--data {source} is not a directory or a .tar, .tar.gz or .zip archive")
    name = dataset_label(str(path))
    sized = f"-{image_size[0]}x{image_size[1]}-{resize}" if image_size else ""
    cache = Path(cache_dir) / f"{name}-{source_key(path)}{sized}.pt"
    streamed = filecache.open_cache(filecache.cache_folder(cache)) if not cache.is_file() else None
    if streamed is not None:  # a set decoded into the file cache, reopened memory-mapped
        test = f"{len(streamed['test_x']):,} test" if "test_x" in streamed else "no test split"
        log(f"Data: {path} ({len(streamed['train_x']):,} train / {test}, decoded earlier: {filecache.cache_folder(cache)})")
        return _dataset(name, stream.place(streamed), test_split, seed, path, log)
    if cache.is_file():
        try:
            tensors = torch.load(cache, weights_only=True, mmap=True)
        except Exception:  # a cache from another version or a damaged one: decode again
            tensors = None
        if tensors is not None:
            test = f"{len(tensors['test_x']):,} test" if "test_x" in tensors else "no test split"
            log(f"Data: {path} ({len(tensors['train_x']):,} train / {test}, decoded earlier: {cache})")
            return _dataset(name, stream.place(tensors), test_split, seed, path, log)
    try:
        tensors = decode_folder(path, log, image_size, resize)
    except DoesNotFit as large:  # decoded chunk by chunk into a file instead, then streamed
        tensors = filecache.decode_to_cache(path, filecache.cache_folder(cache), large.count, large.size, large.channels,
                                            image_size, resize, log)
        return _dataset(name, stream.place(tensors), test_split, seed, path, log)
    remove_stale_temporaries(cache.parent)  # full-size temporaries of killed decodes
    try:
        save_atomic(tensors, cache, make_parents=True)
        log(f"Cached {sum(len(tensors[k]) for k in ('train_x', 'test_x') if k in tensors):,} decoded images in {cache}")
    except OSError as error:  # a read-only cache costs time, not correctness
        print(f"engine: warning: could not write the decode cache {cache}: {error.strerror}", file=sys.stderr)
    return _dataset(name, tensors, test_split, seed, path, log)


def _dataset(name, t, test_split, seed, path, log):
    """The Dataset of cached tensors `t`, its test set held out of the training images where the source has none."""
    three_channels = t["train_x"].shape[1] == 3  # colour photos flip; grayscale sets are often digits
    classes, x, y = list(t["classes"]), t["train_x"], t["train_y"]
    if "test_x" in t:
        if test_split is not None:
            raise UsageError(f"--test-split is for folders without a test split; {path} has one (pass --val-split "
                             "to hold out validation images from train/)")
        return Dataset(name, classes, x, y, t["test_x"], t["test_y"], flip=three_channels)
    fraction = layout.parse_fraction(test_split or layout.DEFAULT_TEST_SPLIT, "--test-split")
    keep, held = layout.stratified(y, fraction, seed, classes)
    if test_split is None:
        log(f"{path} has no test split: holding out a seeded, stratified {fraction:.0%} of each class ({len(held):,} "
            "images) as the test set (--test-split P% to choose)")
    return Dataset(name, classes, stream.take(x, keep), y[keep], stream.take(x, held), y[held], flip=three_channels)
