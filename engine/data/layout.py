"""Where an image folder's images go: its layout, and the seeded, stratified splits that make one.

Accepted layouts (optionally inside one wrapping folder):
- `train/<class>/*` with an evaluation split named any of `test/`, `val/`, `valid/`, `validation/`;
- `train/<class>/*` alone, or `<class>/*` with no split at all: `--test-split P%` (default 10%)
  holds out a seeded, stratified fraction of each class as the test set.
A class folder's images may sit in subfolders of it (as torchvision's ImageFolder reads them); one
top folder holding everything is a wrapper, not a class. The split is a pure function of the
labels, the fraction and the seed, so a checkpoint's config (which keeps all three) lets `engine
eval` rebuild exactly the held-out images.
"""

import posixpath
import unicodedata
from pathlib import Path, PurePosixPath

import torch

from engine.errors import EngineError, UsageError
from engine.pixels import IMAGE_EXTENSIONS, SYSTEM_FOLDERS

EVAL_SPLITS = ("test", "val", "valid", "validation")  # in order of preference
SPLITS = ("train", *EVAL_SPLITS)
# A split folder's name in any case, and the longer names some datasets use (Training/, Testing/):
# a capitalised Train/ must not become a class of its own, with its test images trained on.
SPLIT_NAMES = {**{name: name for name in SPLITS}, "training": "train", "testing": "test"}
LAYOUT = ("expected train/<class>/<image> with test/ (or val/, valid/, validation/), or <class>/<image> folders "
          "split by --test-split")
DEFAULT_TEST_SPLIT = "10%"
WHOLE = "all"  # --test-split all: every image is a test image (engine eval of data other than the run's)


def folder_of(name):
    """The folders (a tuple of names) that hold the file `name` inside the source, when it is an image
    that is not hidden (no part starting with '.', no __MACOSX); None for anything else."""
    path = PurePosixPath(name)
    if hidden(path.parts) or path.suffix.lower() not in IMAGE_EXTENSIONS:
        return None
    return parts_of(name)[:-1]


def parts_of(name):
    """The parts of a path inside a source, each in Unicode's composed form (NFC): macOS writes names
    decomposed (NFD), so `café/` copied from a Mac and typed on Linux is one class, not two. A member
    an archiver stored with an absolute name (`/data/cat/1.jpg`) is read as relative, as unzip and
    tar extract it."""
    parts = PurePosixPath(name).parts
    return tuple(unicodedata.normalize("NFC", part) for part in (parts[1:] if parts[:1] in (("/",), ("//",)) else parts))


def split_of(part):
    """The split a folder name stands for ('train', 'test', ...), in any case, or None."""
    return SPLIT_NAMES.get(part.lower())


def hidden(parts):
    """Whether a path's parts hold a hidden file or folder ('.DS_Store', '._x.jpg', '__MACOSX', '@eaDir':
    engine.pixels.SYSTEM_FOLDERS)."""
    return any(p.startswith(".") or p in SYSTEM_FOLDERS for p in parts)


def check_cache_apart(source: Path, cache_dir):
    """A decode cache (--cache-dir, $ENGINE_CACHE_DIR) at or inside the image folder `source` is refused,
    as --out is: its folder would read as an empty class folder at the next start (or its `NAME.stream/`
    folders would). A hidden one (`photos/.cache`) is never read, so it is fine."""
    folder, source = Path(cache_dir).expanduser().resolve(), source.resolve()
    if source.is_dir() and (folder == source or source in folder.parents) and not hidden(folder.relative_to(source).parts):
        where = "is" if folder == source else "lies inside"
        raise UsageError(f"the decode cache {folder} (--cache-dir, or $ENGINE_CACHE_DIR) {where} the image folder "
                         f"{source} that --data reads: its folders would become class folders of it; choose a cache "
                         "outside it, or a hidden folder in it (.cache)")


def _shape(folders, directories=()):
    """(wrapper, split layout) of the image folders `folders`: the one top folder every image sits
    under, or None; whether the folders below it are split folders (train/, test/, ...). A top folder
    with a visible folder beside it (in `directories`, every folder the source lists) is no wrapper,
    even where that one holds no image: `cat/2019/*.jpg` beside an empty `dog/` is two classes, one of
    them empty (said in one line), not the classes 2019 and 2020."""
    folders = [f for f in folders if f]
    tops = {f[0] for f in folders}
    top = next(iter(tops)) if len(tops) == 1 else None
    beside = any(d and d[0] != top and not hidden(d[:1]) for d in directories)
    wrapper = top if top is not None and not split_of(top) and any(len(f) >= 2 for f in folders) and not beside else None
    rest = [f[1:] if wrapper else f for f in folders]
    return wrapper, any(f and split_of(f[0]) for f in rest)


def _place(folder, wrapper, split_layout):
    """(split or None, class) of an image folder, or None for one outside every class folder. Images
    in subfolders of a class folder belong to it, as in torchvision's ImageFolder."""
    if wrapper:
        if not folder or folder[0] != wrapper:
            return None
        folder = folder[1:]
    if split_layout:
        return (split_of(folder[0]), folder[1]) if len(folder) >= 2 and split_of(folder[0]) else None
    return (None, folder[0]) if folder else None


def nested_splits(images):
    """The class folders (as 'outer/cats') that hold split folders of their own, both train/ and an
    evaluation split (test/, val/, ...): a folder of several datasets, which read as classes would
    mix each one's splits into one class."""
    wrapper, split_layout = _shape(images)
    if split_layout:
        return []
    inside = {}
    for folder in images:
        rest = folder[1:] if wrapper and folder[:1] == (wrapper,) else folder
        if len(rest) >= 2 and split_of(rest[1]):
            inside.setdefault(rest[0], set()).add("train" if split_of(rest[1]) == "train" else "eval")
    prefix = f"{wrapper}/" if wrapper else ""
    return [f"{prefix}{name}" for name, kinds in sorted(inside.items()) if kinds == {"train", "eval"}]


def _spellings(images):
    """{split: the set of folder names the source spells it with}."""
    wrapper, split_layout = _shape(images)
    names = {}
    for folder in images if split_layout else ():
        rest = folder[1:] if wrapper and folder[:1] == (wrapper,) else folder
        if rest and split_of(rest[0]):
            names.setdefault(split_of(rest[0]), set()).add(rest[0])
    return names


def split_names(images):
    """{split: how the source spells its folder} ('Test', or 'test and Test' where two folders are
    read together), for messages to name the folders the user has."""
    return {split: " and ".join(sorted(spelled)) for split, spelled in _spellings(images).items()}


def split_spellings(images):
    """{split: its folder names} for each split named by more than one folder (train/ and TRAIN/, test/
    and Test/), whose images are read together as that split."""
    return {split: sorted(spelled) for split, spelled in _spellings(images).items() if len(spelled) > 1}


def group(images, directories=()):
    """Place the images of a source: `images` is {folder tuple: [items]} in the source's order (from
    `folder_of`), `directories` every folder tuple the source lists, images or not. Returns (found
    {split or None: {class: [items]}}, the class folders that hold no image, as 'train/cat', and
    {folder: image count} of the images outside every class folder, which are not used)."""
    wrapper, split_layout = _shape(images, directories)
    found, outside = {}, {}
    for folder, items in images.items():
        where = _place(folder, wrapper, split_layout)
        if where is not None:
            found.setdefault(where[0], {}).setdefault(where[1], []).extend(items)
        elif items:
            outside[posixpath.join(*folder) if folder else "."] = len(items)
    depth = (1 if wrapper else 0) + (2 if split_layout else 1)  # a class folder's parts
    empty = set()
    for folder in directories:
        where = _place(folder, wrapper, split_layout) if len(folder) == depth and not hidden(folder) else None
        if where is not None and where[1] not in found.get(where[0], {}):
            empty.add(posixpath.join(*folder))
    return found, sorted(empty), outside


def empty_splits(images, directories):
    """The evaluation split folders (test/, val/, ...; as 'test', or 'photos/Test' inside a wrapper) that
    the source lists but that hold no image at all, not even an empty class folder: beside a train/,
    they leave the source with no test split of its own, which the line holding one out names."""
    wrapper, split_layout = _shape(images, directories)
    if not split_layout:
        return []
    top = (wrapper,) if wrapper else ()
    holding = {folder[len(top)] for folder in images if len(folder) > len(top) and folder[:len(top)] == top}
    return sorted(posixpath.join(*folder) for folder in directories
                  if len(folder) == len(top) + 1 and folder[:len(top)] == top and not hidden(folder)
                  and split_of(folder[-1]) in EVAL_SPLITS and folder[-1] not in holding)


def no_class_folders(source):
    return f"{source} has no images in class folders ({LAYOUT})"


def choose(found, source, say=print, names=None):
    """The layout of `found` ({split or None: {class: [items]}}): (train {class: items}, test {class: items}
    or None when the test set is to be split off the training images, the test split's folder name as
    the source spells it). names: split_names of the source."""
    splits = [s for s in SPLITS if found.get(s)]
    shown = lambda split: (names or {}).get(split, split)  # noqa: E731
    if not splits:
        flat = found.get(None)
        if not flat:
            raise EngineError(no_class_folders(source))
        return flat, None, None
    if "train" not in splits:
        hint = ""
        top = Path(source)
        folders = [p for p in top.iterdir() if p.is_dir() and split_of(p.name)] if top.is_dir() else []
        if len(splits) == 1 and len(folders) == 1:  # e.g. a test set alone, for engine eval: its class folders
            hint = f"; to evaluate on {folders[0].name}/ alone, give --data {folders[0]}"
        elif len(splits) == 1 and top.is_file():  # an archive: its folder cannot be named as --data
            hint = f"; to evaluate on {shown(splits[0])}/ alone, extract the archive and give --data its {shown(splits[0])}/ folder"
        raise EngineError(f"{source} has no images under train/ (it has {', '.join(shown(s) + '/' for s in splits)}; "
                          f"{LAYOUT}){hint}")
    evaluation = next((s for s in EVAL_SPLITS if s in splits), None)
    unused = [s for s in splits if s not in ("train", evaluation)]
    if unused:
        say(f"Using {shown(evaluation)}/ as the test split; {', '.join(shown(s) + '/' for s in unused)} not used "
            f"(--val-split holds out validation images from {shown('train')}/)")
    return found["train"], found[evaluation] if evaluation else None, shown(evaluation) if evaluation else None


def parse_fraction(text, flag, whole=False):
    """'10%' -> 0.1; one line for anything that is not a percentage in (0, 100). With `whole`, WHOLE
    ('all') is 1.0."""
    value = str(text).strip()
    if whole and value == WHOLE:
        return 1.0
    try:
        fraction = float(value[:-1]) / 100 if value.endswith("%") else float("nan")
    except ValueError:
        fraction = float("nan")
    if not 0 < fraction < 1:
        also = " (or, for engine eval, all)" if whole else ""
        if fraction == fraction:  # a percentage, out of range: 0% holds nothing out, 100% leaves nothing to train on
            raise UsageError(f"{flag} takes a percentage above 0% and below 100%{also}, not {text!r}")
        number = _number(value)
        hint = f" ({value} as a percentage is {number * 100:g}%)" if number is not None and 0 < number < 1 else ""
        raise UsageError(f"{flag} takes a percentage such as 10%{also}, not {text!r}{hint}")
    return fraction


def _number(text):
    try:
        return float(text)
    except ValueError:
        return None


def parse_count(text, total, flag):
    """--val-split N or P% as a number of images out of `total`."""
    value = str(text).strip()
    if value.endswith("%"):
        return max(1, round(parse_fraction(value, flag) * total))
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise UsageError(f"{flag} takes a number of images (at least 1) or a percentage such as 10%, not {text!r}")
    return count


def stratified(labels: torch.Tensor, fraction, seed, classes, flag="--test-split"):
    """(kept, held out): sorted index tensors holding out round(fraction x n) images of each class, picked
    by a generator seeded with `seed` (the same images for the same labels, fraction and seed)."""
    generator = torch.Generator().manual_seed(seed + 3)  # seed, +1 and +2 pick the --limit-* and --val-split images
    kept, held = [], []
    for index, name in enumerate(classes):
        members = (labels == index).nonzero().flatten()
        count = round(fraction * len(members))
        if len(members) < 2:  # no fraction leaves it both a training and a test image
            raise UsageError(f"{flag} needs at least 2 images of each class, and class {name} has {len(members)}; add "
                             f"images of {name}, or give the data its own test/ split")
        if count == 0 or count == len(members):
            side = "test" if count == 0 else "training"
            raise UsageError(f"{flag} {fraction * 100:g}% leaves class {name} with no {side} images (it has "
                             f"{len(members)}); use another fraction, or more images of {name}")
        order = members[torch.randperm(len(members), generator=generator)]
        held.append(order[:count])
        kept.append(order[count:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values
