"""Where an image folder's images go: its layout, and the seeded, stratified splits that make one.

Accepted layouts (optionally inside one wrapping folder):
- `train/<class>/*` with an evaluation split named any of `test/`, `val/`, `valid/`, `validation/`;
- `train/<class>/*` alone, or `<class>/*` with no split at all: `--test-split P%` (default 10%)
  holds out a seeded, stratified fraction of each class as the test set.
The split is a pure function of the labels, the fraction and the seed, so a checkpoint's config
(which keeps all three) lets `engine eval` rebuild exactly the held-out images.
"""

from pathlib import PurePosixPath

import torch

from engine.errors import EngineError, UsageError
from engine.pixels import IMAGE_EXTENSIONS

EVAL_SPLITS = ("test", "val", "valid", "validation")  # in order of preference
SPLITS = ("train", *EVAL_SPLITS)
LAYOUT = ("expected train/<class>/<image> with test/ (or val/, valid/, validation/), or <class>/<image> folders "
          "split by --test-split")
DEFAULT_TEST_SPLIT = "10%"


def place(name):
    """(split or None, class) for an image's path inside the source, allowing one wrapping folder;
    None for anything that is not an image in a class folder."""
    path = PurePosixPath(name)
    parts = path.parts
    if any(p.startswith(".") or p == "__MACOSX" for p in parts) or path.suffix.lower() not in IMAGE_EXTENSIONS:
        return None
    if len(parts) == 3 and parts[0] in SPLITS:
        return parts[0], parts[1]
    if len(parts) == 4 and parts[1] in SPLITS:
        return parts[1], parts[2]
    if len(parts) == 2 and parts[0] not in SPLITS:
        return None, parts[0]  # <class>/<image>
    if len(parts) == 3 and parts[1] not in SPLITS and parts[0] not in SPLITS:
        return None, parts[1]  # <wrapper>/<class>/<image>
    return None


def choose(found, source, say=print):
    """The layout of `found` ({split or None: {class: [items]}}): (train {class: items}, test {class: items}
    or None when the test set is to be split off the training images, the test split's folder name)."""
    splits = [s for s in SPLITS if found.get(s)]
    if not splits:
        flat = found.get(None)
        if not flat:
            raise EngineError(f"{source} has no images under train/ ({LAYOUT})")
        return flat, None, None
    if "train" not in splits:
        raise EngineError(f"{source} has no images under train/ (it has {', '.join(s + '/' for s in splits)}; {LAYOUT})")
    evaluation = next((s for s in EVAL_SPLITS if s in splits), None)
    unused = [s for s in splits if s not in ("train", evaluation)]
    if unused:
        say(f"Using {evaluation}/ as the test split; {', '.join(s + '/' for s in unused)} not used "
            "(--val-split holds out validation images from train/)")
    return found["train"], found[evaluation] if evaluation else None, evaluation


def empty_classes(root, found):
    """Class-level folders of a directory source that hold no image at all, as 'train/cat' (the walk
    that finds images never sees an empty folder)."""
    from pathlib import Path

    root = Path(root)
    if not root.is_dir():
        return []
    wrappers = [d for d in root.iterdir() if d.is_dir() and d.name not in SPLITS and not d.name.startswith(".")]
    levels = []  # folders whose subfolders are classes
    for split in found:
        levels += [root / split, *(w / split for w in wrappers)] if split else [root, *wrappers]
    empty = []
    for level in levels:
        if not level.is_dir():
            continue
        for d in sorted(level.iterdir()):
            has_image = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in d.rglob("*")) if d.is_dir() else True
            if d.is_dir() and not d.name.startswith(".") and not has_image:
                empty.append(str(d.relative_to(root)))
    return empty


def parse_fraction(text, flag):
    """'10%' -> 0.1; one line for anything that is not a percentage in (0, 100)."""
    value = str(text).strip()
    try:
        fraction = float(value[:-1]) / 100 if value.endswith("%") else float("nan")
    except ValueError:
        fraction = float("nan")
    if not 0 < fraction < 1:
        raise UsageError(f"{flag} takes a percentage such as 10%, not {text!r}")
    return fraction


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
        if count == 0 or count == len(members):
            side = "test" if count == 0 else "training"
            raise UsageError(f"{flag} {fraction:.0%} leaves class {name} with no {side} images (it has "
                             f"{len(members)}); use another fraction, or more images of {name}")
        order = members[torch.randperm(len(members), generator=generator)]
        held.append(order[:count])
        kept.append(order[count:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values
