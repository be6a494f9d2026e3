"""Image-folder datasets from a directory or an archive, in any layout engine.data.layout accepts.

Archives (.tar, .tar.gz, .tgz, .zip) are read member by member, never extracted
(engine.data.sources). Images are decoded once, on every core, into uint8 tensors (with
`--image-size`, each fitted to it by engine.pixels.fit and `--resize`: stretched, or shorter side
to the size and the centre cropped) and cached as one tensor file in the cache directory, keyed by
the source's identity (path, size and modification time of every file) and the image size, so the
next start loads in about a second. A corrupt image is an error that names it; nothing is
half-written. Before decoding, the image count and size must fit in memory, and every image is
checked against the size limit by its header (engine.pixels).
"""

import hashlib
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
from engine.data import evict, filecache, layout, stream
from engine.data.classes import (Notes, check_names, empty_split, in_name_order, one_class_line, own_split_line,
                                 split_classes)
from engine.data.dataset import Dataset, dataset_label, file_label
from engine.data.pool import decoding_pool, stop_pool
from engine.data.archives import archive_kind, last_copies
from engine.data.sources import DoesNotFit, check_memory, count_other, label, members, walk
from engine.errors import EngineError, UsageError, first_line, one_line
from engine.faults import pause_point
from engine.lock import remove_stale_temporaries
from engine.models.spec import MIN_CLASSES
from engine.data.decode import decode_or_say, mixed_sizes, undecodable
from engine.pixels import not_used_line

CACHE_FORMAT = 20  # 2: a set with any colour image is all RGB; 3: any layout, test split optional, --image-size;
# 4: class folders with subfolders, grey images with alpha; 5: split folders in any case (Train/), training/ and
# testing/, class names in NFC, tar links read; 6: .jpe/.jfif images, zip links read; 7: .tga/.avif/.qoi/... images,
# the layout notes kept, Windows and absolute zip names, a JPEG of exactly twice the size drafted, strips cropped by part;
# 8: each class's images in the order of their names, not the source's (an archive and its extracted folder agree);
# 9: photos turned upright as their EXIF orientation says; 10: a TIFF turned once (a recent PIL turns it itself),
# 16-bit grey-with-alpha PNGs grey, a wrapper folder only with no visible folder beside it; 11: an image name an
# archive holds twice read once (its last member); 12: an empty test/ beside train/ kept, to be named; 13: a broken
# link that names no image (a class folder's, its drive gone) named in the 'Not used:' line; 14: a tar cut short or
# with a damaged header refused (tarfile stopped there without a word, and the images read were cached); 15: a
# folder reached twice through links refused (its images were read twice, a loop of two links 41 times); 16: a
# folder's 'Not used:' line not kept, but counted at each start (it went stale when only a notes.txt changed); 17:
# a large MPO (a JPEG with more pictures in it: a phone's Ultra HDR photo) drafted as a JPEG is; 18: a Synology
# NAS's @eaDir/ thumbnails (and $RECYCLE.BIN/, lost+found/, ...) skipped as hidden folders are; 19: a signed 16-bit
# TIFF scaled from -32768 (its negative half was clipped to black), a signed 8-bit one offset from -128
# 20: a 32-bit integer TIFF scaled from its own 32 bits (it was clipped at 65535, white above)
CHUNK = 1024  # images handed to the decoding processes at a time: bounds the undecoded bytes held in memory


def source_key(path: Path, others=None):
    """A digest of what the source is: its path, its folders, and the size, mtime and ctime of each of its
    image files (the ctime changes when a file is moved or replaced, which keeps size and mtime: same-size BMPs swapped
    between classes, a tar extracted with its times). others: a dict to count a folder's other files in, by
    kind (sources.count_other), for the 'Not used:' line, which they change and the key does not."""
    digest = hashlib.sha256(f"{CACHE_FORMAT}:{path.resolve()}".encode("utf-8", "surrogateescape"))
    if path.is_dir():
        for root, dirs, files in walk(path):
            for name in dirs:  # an empty class folder added is refused (split_classes), warm cache or cold; a
                if layout.hidden(Path(root, name).relative_to(path).parts):  # hidden one (.git/, .cache/) is never read
                    continue
                digest.update(f"{Path(root, name).relative_to(path)}/\n".encode("utf-8", "surrogateescape"))
            for name in files:
                relative = Path(root, name).relative_to(path).as_posix()
                if layout.folder_of(relative) is None:  # notes, hidden files and folders: not read, so not the key's
                    if others is not None:
                        count_other(others, path, relative, layout.parts_of(relative))
                    continue
                st = os.stat(Path(root) / name)
                key = f"{Path(root, name).relative_to(path)}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}\n"
                digest.update(key.encode("utf-8", "surrogateescape"))  # a name in no UTF-8: its bytes
    else:
        st = path.stat()
        digest.update(f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}".encode())
    return digest.hexdigest()[:20]


def _chunks(path: Path, size, rule, first=None, copies=None, mode=None):
    """Lists of (folder, (name, bytes, size, rule, first, mode)) of at most CHUNK images, in the source's
    order; `first`, `mode`: see `engine.data.decode.decode`; `copies`: the Survey's, whose earlier members are not read."""
    chunk = []
    for name, read in last_copies(members(path), copies or {}):
        folder = layout.folder_of(name) if read is not None else None
        if folder is None:
            continue
        chunk.append((folder, (label(path, name), read(), size, rule, first, mode)))
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def decode_folder(path: Path, log=print, size=None, rule="stretch", test_split=None, mode=None):
    """Decode every image once, on every core: {"classes", "train_x", "train_y"} and, where the source
    has an evaluation split, "test_x", "test_y". `size` (H, W): resize each image to it (engine.pixels.fit).
    `test_split`: refused before any image is decoded where the source has its own split. `mode` "L": every
    image decoded as gray (see `engine.data.decode.decode`)."""
    from PIL import Image
    from tqdm import tqdm

    images = {}  # folder tuple -> [(name, array)], placed by engine.data.layout once all are read
    bomb_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # check_size refuses large ones, naming the size
    pool, workers = decoding_pool()
    started, sizes, finished, bad = time.perf_counter(), {}, False, []
    try:
        survey = check_memory(path, size)
        if not survey.count:  # before "Decoding": a folder or archive with no image file at all
            raise EngineError(survey.no_images(path))
        notes = Notes(log)
        for line in survey.lines(path):
            notes(line)
        check_names(survey, path, test_split)
        log(f"Decoding {path}{f' at {size[0]}x{size[1]}' if size else ''} (once: the result is cached until the images change)")
        with tqdm(total=survey.count, desc="Decoding", unit=" img", disable=sys.stderr is None or not sys.stderr.isatty(), leave=False) as progress:
            for chunk in _chunks(path, size, rule, survey.expected(path, size), survey.copies, mode):
                items = [item for _, item in chunk]
                arrays = pool.imap(decode_or_say, items, chunksize=64) if pool else map(decode_or_say, items)  # submitted
                pause_point("decode")  # test-only: a Ctrl-C while the decoding processes work
                for (folder, item), array in zip(chunk, arrays):
                    if isinstance(array, str):  # named with the others once all are read
                        bad.append((item[0], array))
                        continue
                    sizes.setdefault(array.shape[:2], item[0])
                    images.setdefault(folder, []).append((item[0], array))
                progress.update(len(chunk))
        if bad:
            raise EngineError(undecodable(bad))
        finished = True
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        reason = first_line(error).rstrip(":")  # tarfile lists every method tried
        raise EngineError(f"{path} is not a readable archive ({reason})") from None
    except OSError as error:
        raise EngineError(f"cannot read {path}: {error}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = bomb_limit
        stop_pool(pool, finished)
    if len(sizes) > 1:  # only where the first image's header did not open (see Survey)
        (a, first), (b, other) = list(sizes.items())[:2]
        raise UsageError(mixed_sizes(path, (a[::-1], first), (b[::-1], other)))
    seconds = time.perf_counter() - started
    count = sum(len(v) for v in images.values())
    rate = count / max(seconds, 1e-9)
    log(f"Decoded {count:,} image{'s' if count != 1 else ''} in {seconds:.1f} s ({rate:,.0f} img/s on {workers} "
        f"process{'es' if workers > 1 else ''})")
    train, test, classes = split_classes(images, survey.folders, path, notes)
    colour = any(a.ndim == 3 for part in (train, test or {}) for images in part.values() for _, a in images)
    result = {"classes": classes, "notes": notes.lines, **empty_split(test, images, survey.folders)}
    for split, part in (("train", train), ("test", test)):
        if part is None:
            continue
        arrays, labels = [], []
        for index, name in enumerate(classes):
            images = in_name_order(part.get(name, []))
            if colour:  # one colour image makes the whole set RGB (grey replicated, as PIL does)
                images = [a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2) for a in images]
            arrays += images
            labels += [index] * len(images)
        x = torch.from_numpy(np.stack(arrays))
        x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        result[f"{split}_x"] = x.contiguous()
        result[f"{split}_y"] = torch.tensor(labels, dtype=torch.int64)
    return result


def read(source, cache_dir: Path, log=print, image_size=None, test_split=None, seed=0, resize="stretch",
         mode=None) -> Dataset:
    """The image folder or archive at `source`, decoded once (resized to `image_size` (H, W) if given)
    and then loaded from the cache. A source without an evaluation split gets its test set held out
    by `test_split` (a percentage; default 10%), seeded and stratified (engine.data.layout). `mode` "L": every
    image read as gray, converted before it is fitted (for a model of gray images; cached apart)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise EngineError(f"{source}: no such file or directory (give an image folder or a .tar/.tar.gz/.zip of one)")
    if not path.is_dir() and archive_kind(path) is None:  # not named as --data: engine eval reads a run's own path
        raise EngineError(f"{source} is not a directory or a .tar, .tar.gz or .zip archive of an image folder")
    layout.check_cache_apart(path, cache_dir)  # before a cache is read or written
    name = dataset_label(str(path))
    sized = (f"-{image_size[0]}x{image_size[1]}-{resize}" if image_size else "") + ("-gray" if mode == "L" else "")
    others = {} if path.is_dir() else None  # a folder's files not read, said afresh (an archive's decode keeps them)
    stem = f"{file_label(name)}-{source_key(path, others)}"  # LABEL-KEY: evict.remove_earlier keeps only this key's
    cache = Path(cache_dir) / f"{stem}{sized}.pt"
    unused = not_used_line(path, others)
    streamed = filecache.open_cache(filecache.cache_folder(cache)) if not cache.is_file() else None
    if streamed is not None:  # a set decoded into the file cache, reopened memory-mapped
        log(f"Data: {path} ({_counts(streamed, test_split)}, decoded earlier: {filecache.cache_folder(cache)})")
        for line in [unused] * bool(unused) + streamed.get("notes", []):
            log(line)
        return _dataset(name, stream.place(streamed), test_split, seed, path, log)
    if cache.is_file():
        try:
            tensors = torch.load(cache, weights_only=True, mmap=True)
        except Exception:  # a cache from another version or a damaged one: decode again
            tensors = None
        if tensors is not None:
            log(f"Data: {path} ({_counts(tensors, test_split)}, decoded earlier: {cache})")
            for line in [unused] * bool(unused) + tensors.get("notes", []):
                log(line)
            return _dataset(name, stream.place(tensors), test_split, seed, path, log)
    if unused:
        log(unused)
    try:
        tensors = decode_folder(path, log, image_size, resize, test_split, mode)
    except DoesNotFit as large:  # decoded chunk by chunk into a file instead, then streamed
        check_names(large.survey, path, test_split)
        tensors = filecache.decode_to_cache(path, filecache.cache_folder(cache), large.survey, large.size, large.channels,
                                            image_size, resize, log)
        evict.remove_earlier(cache_dir, stem, path, log)
        return _dataset(name, stream.place(tensors), test_split, seed, path, log)
    remove_stale_temporaries(cache.parent)  # full-size temporaries of killed decodes
    try:
        save_atomic({**tensors, "source": str(path.resolve())}, cache, make_parents=True)  # whose entry: evict
        log(f"Cached {sum(len(tensors[k]) for k in ('train_x', 'test_x') if k in tensors):,} decoded images in {cache}")
        evict.remove_earlier(cache_dir, stem, path, log)
    except OSError as error:  # a read-only cache costs time, not correctness
        print(one_line(f"engine: warning: could not write the decode cache {cache}: {error.strerror}"), file=sys.stderr)
    return _dataset(name, tensors, test_split, seed, path, log)


def _counts(t, test_split):
    """The Data line's counts: train / test, or every image as the test set (engine eval of other data)."""
    if "test_x" in t:
        return f"{len(t['train_x']):,} train / {len(t['test_x']):,} test"
    if test_split == layout.WHOLE:
        return f"{len(t['train_x']):,} images, all evaluated"
    fraction = layout.parse_fraction(test_split or layout.DEFAULT_TEST_SPLIT, "--test-split")  # what is scored:
    held = sum(round(fraction * int(n)) for n in torch.bincount(t["train_y"]))  # as stratified() holds it out
    return f"{len(t['train_x']):,} images, no test split of its own: {held:,} held out as the test set"


def _dataset(name, t, test_split, seed, path, log):
    """The Dataset of cached tensors `t`, its test set held out of the training images where the source has none."""
    three_channels = t["train_x"].shape[1] == 3  # colour photos flip; grayscale sets are often digits
    classes, x, y = list(t["classes"]), t["train_x"], t["train_y"]
    if len(classes) < MIN_CLASSES and test_split != layout.WHOLE:  # engine eval of one class's photos is fine; training is not
        raise EngineError(one_class_line(path, len(classes)))
    if "test_x" in t:
        if test_split not in (None, layout.WHOLE):  # WHOLE: the source's own test split is the whole test set
            raise UsageError(own_split_line(path))
        return Dataset(name, classes, x, y, t["test_x"], t["test_y"], flip=three_channels)
    if test_split == layout.WHOLE:  # engine eval of a folder that is not the run's: every image
        return Dataset(name, classes, stream.take(x, torch.arange(0)), y[:0], x, y, flip=three_channels)
    fraction = layout.parse_fraction(test_split or layout.DEFAULT_TEST_SPLIT, "--test-split")
    keep, held = layout.stratified(y, fraction, seed, classes)
    if test_split is None:  # an empty test/ beside train/ is named: the user may have meant to fill it
        empty = t.get("empty_split")
        why = f"{path}: {empty}/ has no images, so there is no test split" if empty else f"{path} has no test split"
        log(f"{why}: holding out a seeded, stratified {fraction:.0%} of each class ({len(held):,} images) as the test "
            f"set (--test-split P% to choose{f'; or put test images in {empty}/<class>/' if empty else ''})")
    return Dataset(name, classes, stream.take(x, keep), y[keep], stream.take(x, held), y[held], flip=three_channels)
