"""The decode cache of a set too large to decode in memory: every image decoded chunk by chunk
straight into one raw uint8 file, and reopened memory-mapped, so no step holds the whole set.

`NAME.stream/` holds images.u8 ((N, C, H, W) uint8, in the source's order) and index.pt (the
classes, and each split's rows and labels in the order an in-memory decode stacks them). It is
written as a temporary folder and renamed when complete: a killed decode leaves nothing half-valid.
"""

import os
import shutil
import sys
import tarfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from engine.data.classes import Notes, empty_split, in_name_order, split_classes
from engine.data.stream import Rows
from engine.errors import EngineError, UsageError, first_line
from engine.memory import size_text

DISK_MARGIN = 64 << 20  # bytes left free beyond the images: the index, and the rest of the machine


def cache_folder(cache: Path) -> Path:
    """Where the file cache of the in-memory cache file `cache` (NAME.pt) lives: NAME.stream/."""
    return cache.with_suffix(".stream")


def open_cache(folder: Path):
    """{"classes", "train_x", "train_y", "test_x"?, "test_y"?} with `Rows` views of the memory-mapped
    images, or None when `folder` is missing or not a complete cache."""
    try:
        index = torch.load(folder / "index.pt", weights_only=True)
        shape = tuple(index["shape"])  # (N, C, H, W)
        images = folder / "images.u8"
        if images.stat().st_size != int(np.prod(shape)):
            return None
    except Exception:  # missing, from another version, damaged: decode again
        return None
    # MAP_PRIVATE: pages are read from the file on demand and never written back.
    base = torch.from_file(str(images), shared=False, size=int(np.prod(shape)), dtype=torch.uint8).view(shape)
    tensors = {"classes": index["classes"], "notes": index.get("notes", [])}
    if "empty_split" in index:  # an empty test/ beside train/ (classes.empty_split)
        tensors["empty_split"] = index["empty_split"]
    for split in ("train", "test"):
        if f"{split}_rows" in index:
            tensors[f"{split}_x"] = Rows(base, index[f"{split}_rows"])
            tensors[f"{split}_y"] = index[f"{split}_y"]
    return tensors


def _place(temporary: Path, folder: Path):
    """Rename the finished decode `temporary` to `folder`. The rename comes first, and fails where `folder`
    exists: another run of these images, at once, finished first (its cache, which it reads, is kept), or
    an incomplete leftover (replaced). Removing first let one run delete the other's cache just renamed."""
    for _ in range(2):
        try:
            os.rename(temporary, folder)
            return
        except OSError:
            if open_cache(folder) is not None:
                return
            shutil.rmtree(folder, ignore_errors=True)
    os.rename(temporary, folder)


def check_disk(path, folder: Path, need):
    """One line, before decoding, when the cache's disk has less than `need` bytes free, or the cache
    folder cannot be made (a set that fits in memory trains without its cache; this one cannot)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
    except OSError as error:
        raise EngineError(f"{path}: its decoded images ({size_text(need)}) do not fit in memory, so they are decoded "
                          f"into a file cache, and the cache folder {folder} cannot be made ({error.strerror or error}); "
                          "pass --cache-dir a folder you can write to") from None
    if need + DISK_MARGIN > free:
        raise EngineError(f"{path}: its decoded images need {size_text(need + DISK_MARGIN)} in the decode cache at "
                          f"{folder} ({size_text(need)}, and {size_text(DISK_MARGIN)} left free beside them), and "
                          f"{size_text(free)} is free there; free some space, or pass --cache-dir on a larger disk "
                          "(or a smaller --image-size)")


def decode_to_cache(path: Path, folder: Path, survey, size, channels, image_size=None, rule="stretch", log=print):
    """Decode the source at `path` into the file cache `folder` and open it. survey: its
    engine.data.imagefolder.Survey (image count, folders, first image); size: (H, W) every image has (`image_size`, fitted by `rule` as engine.pixels.fit does, or else
    the first image's); channels: the first image's (1 or 3). A colour image in a set that began grey starts the decode again in RGB, as an
    in-memory decode makes the whole set RGB."""
    H, W = size
    count = survey.count
    check_disk(path, folder.parent, count * 3 * H * W)  # RGB: a grey set may turn out to hold a colour image
    _remove_stale(folder.parent)
    temporary = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    try:
        while True:  # at most twice: again in RGB
            shutil.rmtree(temporary, ignore_errors=True)
            temporary.mkdir(parents=True)
            places = _decode_into(path, temporary / "images.u8", survey, size, channels, image_size, rule, log)
            if places is not None:
                break
            channels = 3
            log(f"{path}: a colour image among grey ones: decoding again in RGB (one colour image makes the set RGB)")
        index = _index(path, places, survey, log)
        index["shape"], index["source"] = [len(places), channels, H, W], str(path.resolve())  # source: evict
        with open(temporary / "index.pt", "wb") as f:
            torch.save(index, f)
            f.flush()
            os.fsync(f.fileno())
        _place(temporary, folder)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise EngineError(f"{path} is not a readable archive ({first_line(error).rstrip(':')})") from None
    except OSError as error:  # reading the source, or writing the cache (a disk that filled up meanwhile)
        raise EngineError(f"cannot decode {path} into the file cache {folder}: {error.strerror or error}") from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    log(f"Cached {len(places):,} decoded images in {folder} ({size_text(len(places) * channels * H * W)}, "
        "read memory-mapped)")
    return open_cache(folder)


def _decode_into(path, file, survey, size, channels, image_size, rule, log):
    """Decode every image into `file` as (N, C, H, W) uint8 rows in the source's order; their folders
    (tuples, placed by engine.data.layout), or None when a colour image turns up in a grey (channels 1)
    decode."""
    from PIL import Image
    from tqdm import tqdm

    from engine.data.decode import decode_or_say, mixed_sizes, undecodable
    from engine.data.imagefolder import _chunks
    from engine.data.pool import decoding_pool, stop_pool

    H, W = size
    pool, workers = decoding_pool()
    finished = False
    bomb_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # check_size refuses large ones, naming the size
    count, places, first, started, bad = survey.count, [], None, time.perf_counter(), []
    given = "" if image_size else " (the first image's size)"
    log(f"Decoding {path} at {H}x{W}{given} into a file cache, chunk by chunk: "
        f"{count:,} images, {size_text(count * channels * H * W)}, more than memory holds (once, until the images change)")
    try:
        with open(file, "wb") as f, tqdm(total=count, desc="Decoding", unit=" img", disable=sys.stderr is None or not sys.stderr.isatty(),
                                         leave=False) as progress:
            for chunk in _chunks(path, image_size, rule, survey.expected(path, image_size), survey.copies):
                items = [item for _, item in chunk]
                arrays = list(pool.imap(decode_or_say, items, chunksize=64)) if pool else [decode_or_say(i) for i in items]
                rows = []
                for (folder, item), array in zip(chunk, arrays):
                    if isinstance(array, str):  # an image that cannot be decoded: named with the others at the end
                        bad.append((item[0], array))
                        continue
                    first = first or (array.shape[1::-1], item[0])
                    if array.shape[:2] != (H, W):
                        raise UsageError(mixed_sizes(path, ((W, H), first[1]), (array.shape[1::-1], item[0])))
                    if array.ndim == 3 and channels == 1:
                        return None
                    if array.ndim == 2 and channels == 3:  # grey replicated, as PIL does
                        array = np.repeat(array[..., None], 3, axis=2)
                    rows.append(array.reshape(H, W, channels))
                    places.append((folder, item[0]))
                if rows:
                    f.write(np.ascontiguousarray(np.stack(rows).transpose(0, 3, 1, 2)).tobytes())  # (n, C, H, W)
                progress.update(len(chunk))
            if bad:
                raise EngineError(undecodable(bad))
            f.flush()
            os.fsync(f.fileno())
        finished = True
    finally:
        Image.MAX_IMAGE_PIXELS = bomb_limit
        stop_pool(pool, finished)
    seconds = time.perf_counter() - started
    log(f"Decoded {len(places):,} images in {seconds:.1f} s ({len(places) / max(seconds, 1e-9):,.0f} img/s on "
        f"{workers} process{'es' if workers > 1 else ''})")
    return places


def _index(path, places, survey, log):
    """Each split's rows (int64) and labels in the order an in-memory decode stacks them: class by
    class in name order, each class's images in the order of their names (classes.in_name_order);
    its notes, as an in-memory decode keeps them (the files not read, a split not used)."""
    images = {}
    for row, (folder, name) in enumerate(places):
        images.setdefault(folder, []).append((name, row))
    notes = Notes(log)
    for line in survey.lines(path):
        notes(line)
    train, test, classes = split_classes(images, survey.folders, path, notes)
    index = {"classes": classes, "notes": notes.lines, **empty_split(test, images, survey.folders)}
    for split, part in (("train", train), ("test", test)):
        if part is None:
            continue
        rows = [row for name in classes for row in in_name_order(part.get(name, []))]
        labels = [i for i, name in enumerate(classes) for _ in part.get(name, [])]
        index[f"{split}_rows"] = torch.tensor(rows, dtype=torch.int64)
        index[f"{split}_y"] = torch.tensor(labels, dtype=torch.int64)
    return index


def _remove_stale(folder: Path):
    """Temporary folders of decodes killed part-way (.NAME.stream.tmpPID whose process is gone)."""
    for entry in folder.glob(".*.stream.tmp*"):
        try:
            pid = int(entry.name.rsplit(".tmp", 1)[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except (ValueError, PermissionError):
            pass
