"""Image-folder datasets (`train/<class>/*`, `test/<class>/*`) from a directory or an archive.

Archives (.tar, .tar.gz, .tgz, .zip) are read member by member, never extracted. Images are
decoded once into uint8 tensors and cached as one tensor file in the cache directory, keyed by
the source's identity (path, size and modification time of every file), so the next start
loads in about a second. A corrupt image is an error that names it; nothing is half-written.
Before decoding, the image count and the first image's header must fit in memory, and every
image is checked against the size limit by its header (engine.pixels).
"""

import hashlib
import io
import os
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from engine.checkpoint import save_atomic
from engine.data.dataset import ARCHIVE_SUFFIXES, Dataset, dataset_label
from engine.errors import EngineError, first_line
from engine.lock import remove_stale_temporaries
from engine.pixels import IMAGE_EXTENSIONS, SIXTEEN_BIT, check_size, eight_bit

CACHE_FORMAT = 2  # 2: a set with any colour image is all RGB
SPLITS = ("train", "test")
LAYOUT = "expected train/<class>/<image> and test/<class>/<image>"


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


def _place(name):
    """(split, class) for an image's path, allowing one wrapping folder; None for other files."""
    parts = PurePosixPath(name).parts
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    if PurePosixPath(name).suffix.lower() not in IMAGE_EXTENSIONS:
        return None
    if len(parts) == 3 and parts[0] in SPLITS:
        return parts[0], parts[1]
    if len(parts) == 4 and parts[1] in SPLITS:
        return parts[1], parts[2]
    return None


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


def _decode(data, name, size):
    """(H, W) uint8 for a grayscale image, (H, W, 3) for any other; `size` (H, W) must match."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            check_size(image, name)  # by its header, before a pixel is decoded
            array = np.asarray(eight_bit(image).convert("L" if image.mode in GRAY_MODES else "RGB"))  # 16-bit scaled
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise EngineError(f"cannot decode image {name}: {error}") from None
    if size is not None and array.shape[:2] != size:
        raise EngineError(
            f"image {name} is {array.shape[1]}x{array.shape[0]} but the first image was {size[1]}x{size[0]}; "
            "all images in a folder dataset must share one size"
        )
    return array


def available_memory():
    """Bytes the kernel could give this process without swapping (MemAvailable), or None."""
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


def check_memory(path: Path):
    """Refuse, before decoding, a source whose decoded images would not fit in memory: the image
    count times the first image's size (all must share it), twice over while they are stacked."""
    from PIL import Image, UnidentifiedImageError

    count, first = 0, None
    for name, read in _members(path):
        if _place(name) is None:
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
        return
    width, height, channels = first
    need = 2 * count * width * height * channels
    if need > available:
        raise EngineError(f"{path}: decoding its {count:,} images of {width}x{height}x{channels} needs about "
                          f"{need / 1e9:,.1f} GB of memory, and {available / 1e9:,.1f} GB is available; "
                          "use fewer or smaller images, or a machine with more memory")


def decode_folder(path: Path, log=print):
    """Decode every image once: {"classes", "train_x", "train_y", "test_x", "test_y"}."""
    from PIL import Image
    from tqdm import tqdm

    found = {split: {} for split in SPLITS}  # split -> class -> [arrays]
    size, colour = None, False
    progress = tqdm(desc="Decoding", unit=" img", disable=not sys.stderr.isatty(), leave=False)
    bomb_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # check_size refuses large ones, naming the size
    try:
        check_memory(path)
        log(f"Decoding {path} (first use only; the result is cached)")
        with progress:
            for name, read in _members(path):
                place = _place(name)
                if place is None:
                    continue
                array = _decode(read(), f"{path}:{name}" if path.is_file() else str(path / name), size)
                size, colour = array.shape[:2], colour or array.ndim == 3
                found[place[0]].setdefault(place[1], []).append(array)
                progress.update()
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        reason = first_line(error).rstrip(":")  # tarfile lists every method tried
        raise EngineError(f"{path} is not a readable archive ({reason})") from None
    except OSError as error:
        raise EngineError(f"cannot read {path}: {error}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = bomb_limit
    for split in SPLITS:
        if not found[split]:
            raise EngineError(f"{path} has no images under {split}/ ({LAYOUT})")
    classes = sorted(found["train"])
    missing = sorted(set(found["test"]) - set(classes))
    if missing:
        raise EngineError(f"{path}: test/ has classes that train/ lacks: {', '.join(missing)}")
    if len(classes) < 2:
        raise EngineError(f"{path} has {len(classes)} class under train/; a classifier needs at least 2 ({LAYOUT})")
    result = {"classes": classes}
    for split in SPLITS:
        arrays, labels = [], []
        for index, name in enumerate(classes):
            images = found[split].get(name, [])
            if colour:  # one colour image makes the whole set RGB (grey replicated, as PIL does)
                images = [a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2) for a in images]
            arrays += images
            labels += [index] * len(images)
        x = torch.from_numpy(np.stack(arrays))
        x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        result[f"{split}_x"] = x.contiguous()
        result[f"{split}_y"] = torch.tensor(labels, dtype=torch.int64)
    return result


def read(source, cache_dir: Path, log=print) -> Dataset:
    """The image folder or archive at `source`, decoded once and then loaded from the cache."""
    path = Path(source).expanduser()
    if not path.exists():
        raise EngineError(f"--data {source}: no such file or directory (give an image folder or a .tar/.tar.gz/.zip of one)")
    if not path.is_dir() and _archive_kind(path) is None:
        raise EngineError(f"--data {source} is not a directory or a .tar, .tar.gz or .zip archive")
    name = dataset_label(str(path))
    cache = Path(cache_dir) / f"{name}-{source_key(path)}.pt"
    if cache.is_file():
        try:
            tensors = torch.load(cache, weights_only=True, mmap=True)
        except Exception:  # a cache from another version or a damaged one: decode again
            tensors = None
        if tensors is not None:
            log(f"Data: {path} ({len(tensors['train_x']):,} train / {len(tensors['test_x']):,} test, decoded earlier: {cache})")
            return _dataset(name, tensors)
    tensors = decode_folder(path, log)
    remove_stale_temporaries(cache.parent)  # full-size temporaries of killed decodes
    try:
        save_atomic(tensors, cache, make_parents=True)
        log(f"Cached {len(tensors['train_x']) + len(tensors['test_x']):,} decoded images in {cache}")
    except OSError as error:  # a read-only cache costs time, not correctness
        print(f"engine: warning: could not write the decode cache {cache}: {error.strerror}", file=sys.stderr)
    return _dataset(name, tensors)


def _dataset(name, t):
    three_channels = t["train_x"].shape[1] == 3  # colour photos flip; grayscale sets are often digits
    return Dataset(name, list(t["classes"]), t["train_x"], t["train_y"], t["test_x"], t["test_y"], flip=three_channels)
