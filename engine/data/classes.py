"""Decoded images placed in their classes and splits (engine.data.layout), with the checks that say,
in one line, what is wrong with a source's folders: class folders holding splits of their own, an
empty class folder, an evaluation split whose classes are not train/'s, a --test-split for a source
that has a split. `Notes` keeps what a source leaves out, said again from the decode cache.
Shared by the in-memory decode (engine.data.imagefolder) and the file cache (engine.data.filecache).
"""

from pathlib import Path

from engine.data import layout
from engine.errors import EngineError, UsageError
from engine.models.spec import MIN_CLASSES


class Notes:
    """`log`, keeping what it says about a source's layout (a split not used, files not read) so
    that a run from the decode cache says it again: those images are still left out."""

    def __init__(self, log):
        self.log, self.lines = log, []

    def __call__(self, line):
        self.lines.append(line)
        self.log(line)


def split_classes(images, folders, path, log):
    """(train {class: items}, test {class: items} or None, sorted class names) of what a decode found
    ({folder tuple: [items]}; `folders`: every folder the source lists), checked: no empty class
    folder, the evaluation split's classes those of train/ (at least 2 classes is checked when the set
    is read for training, `_dataset`: one class's photos may be evaluated).
    engine.data.filecache checks its decode with it too."""
    refuse_nested_splits(images, path)
    for split, spelled in layout.split_spellings(images).items():
        log(f"Reading {' and '.join(name + '/' for name in spelled)} of {path} together as its {split} split")
    found, empty, outside = layout.group(images, folders)
    beside = _folders(outside)  # where images outside class folders are
    try:
        train, test, named = layout.choose(found, path, log, layout.split_names(images))
    except EngineError as error:
        raise _placed(error, outside) from None
    if outside:  # a stray photo beside the class folders: said, not silently dropped
        count = sum(outside.values())
        log(f"Not used: {count:,} image{'s' if count > 1 else ''} outside every class folder of {path} (in "
            f"{beside}{' ...' if len(outside) > 3 else ''})")
    splits = [folder for folder in empty if layout.split_of(folder.split("/")[-1])] if found.get(None) else []
    if splits:  # <class>/ folders and an empty test/ beside them: a split folder, not a class with no images
        raise EngineError(f"{path}: {splits[0]}/ has no images, and beside class folders a split folder is no class: "
                          f"remove it (a --test-split of each class is then held out), or move the class folders into "
                          f"train/ and put test images in {splits[0]}/<class>/")
    if empty:
        others = ", ".join(empty[1:4]) + (f" and {len(empty) - 4} more" if len(empty) > 4 else "")
        alone = list(found.get(None) or {})  # one class with images beside empty ones: perhaps a wrapper
        hint = f" (if {alone[0]}/ holds the class folders, give it as --data)" if len(alone) == 1 else ""
        raise EngineError(f"{path}: class folder {empty[0]} has no images{f' (nor has {others})' if others else ''}; "
                          f"add images or remove the folder{hint}")
    classes = sorted(train)
    if test is not None and set(test) != set(classes):
        extra, missing = sorted(set(test) - set(classes)), sorted(set(classes) - set(test))
        trained = layout.split_names(images).get("train", "train")
        differ = (f"has classes that {trained}/ lacks: {', '.join(shown_name(n, classes, trained + '/') for n in extra)}"
                  if extra else f"lacks classes that {trained}/ has: {', '.join(missing)}")
        raise EngineError(f"{path}: {named}/ {differ} (the evaluation split needs {trained}/'s classes, each with images)")
    return train, test, classes


def empty_split(test, images, folders):
    """{"empty_split": its folder} where a source has no test split (`test` None) but lists an empty
    test/ (or val/, ...: layout.empty_splits) beside train/, for the line holding a test set out to
    name it; {} otherwise. Kept with the decoded tensors, so a run from the decode cache names it too."""
    empty = layout.empty_splits(images, folders) if test is None else []
    return {"empty_split": empty[0]} if empty else {}


def shown_name(name, names, owner):
    """A class name one side lacks, as a message shows it: quoted where spaces begin or end it (invisible
    otherwise), with the name of `names` (`owner`'s: 'train/', 'the model') that differs only in case or
    in such spaces."""
    shown = repr(name) if name != name.strip() else name
    near = [n for n in names if n.strip().casefold() == name.strip().casefold()]
    return f"{shown} ({owner} has {near[0]!r})" if near else shown


def _placed(error, outside):
    """layout.choose's refusal, saying where the images it did not place are (none in class folders)."""
    if not outside:
        return error
    beside = _folders(outside)
    if not any(layout.split_of(part) for folder in outside for part in folder.split("/")):  # loose images
        return EngineError(f"{error}; {beside} hold{'s' if len(outside) == 1 else ''} images outside every class "
                           "folder (put each class's images in a folder named after it)")
    # e.g. red/, green/ and a class named test/: the name made it a split layout
    return EngineError(f"{error}; {beside} hold images in no split's class folder (is a class named like a split, "
                       "test/ or val/? rename it)")


def _folders(outside):
    """The first three folders of `outside` ({folder: image count}) as a message names them: 'test/', or
    'its top folder' for the source's own top ('.'), which './' would name only to a reader of paths."""
    return ", ".join("its top folder" if folder == "." else f"{folder}/" for folder in list(outside)[:3])


def in_name_order(named):
    """The items of [(name, item)] in the order of their names (a stable sort: a name an archive holds twice
    keeps its order). A class's images are stacked so, not in the source's order, so that a folder, the
    archive made of it and that archive extracted or re-zipped give the same rows: the same --test-split
    and --val-split images, and the same data fingerprint (engine.resume) when a run's images move."""
    return [item for _, item in sorted(named, key=lambda pair: pair[0])]


def own_split_line(path):
    return f"--test-split is for folders without a test split; {path} has one (pass --val-split to hold out validation images from train/)"


def refuse_nested_splits(images, path):
    """One line for class folders that hold train/ and test/ of their own (layout.nested_splits)."""
    nested = layout.nested_splits(images)
    if nested:
        shown = ", ".join(f"{name}/" for name in nested[:3]) + (" ..." if len(nested) > 3 else "")
        direct = {tuple(name.split("/")) for name in nested}
        if any(folder[:-1] in direct and layout.split_of(folder[-1]) for folder in images):  # <class>/<split>/*.jpg
            raise EngineError(f"{path}: {shown} hold{'s' if len(nested) == 1 else ''} train/ and test/ folders of "
                              f"images, a <class>/<split>/ layout; put the splits at the top, each with a folder per "
                              "class (train/<class>/..., test/<class>/...)")
        raise EngineError(f"{path}: {shown} hold{'s' if len(nested) == 1 else ''} train/ and test/ folders of "
                          f"{'its' if len(nested) == 1 else 'their'} own, which read as classes would mix each one's "
                          f"splits into one class; give --data one of them (e.g. {Path(path) / nested[0]}), or put the "
                          "splits at the top (train/<class>/..., test/<class>/...)")


def _wrapped_hint(holding, classes):
    """'; ...' where the one class folder holds only folders of images (a set wrapped twice,
    `chest_xray/chest_xray/...`): those are likely the classes."""
    if len(classes) != 1:
        return ""
    inside, direct, where = set(), False, None
    for folder in holding:
        if classes[0] in folder:
            at = folder.index(classes[0])
            where = folder[:at + 1]
            if len(folder) > at + 1:
                inside.add(folder[at + 1])
            else:
                direct = True
    if direct or len(inside) < 2 or where is None:
        return ""
    shown = ", ".join(f"{name}/" for name in sorted(inside)[:4]) + (" ..." if len(inside) > 4 else "")
    return f"; its one class folder {'/'.join(where)}/ holds the folders {shown}: if those are the classes, give it as --data"


def one_class_line(path, count):
    return f"{path} has {count} class; a classifier needs at least {MIN_CLASSES} ({layout.LAYOUT})"


def check_names(survey, path, test_split):
    """From a source's names (the Survey), before any image is decoded: class folders holding splits
    of their own, images in no class folder at all, a --test-split for a source with its own
    evaluation split, and a set to train on with one class are refused, and so is everything the decode's
    split_classes would refuse once every image is decoded (an empty class folder, an evaluation split whose
    classes are not train/'s: found after minutes of decoding a large folder, decoded again once fixed, as
    the folder, and so the cache key, changed). Its notes are the decode's to say."""
    holding = {folder: [None] * n for folder, n in survey.holding.items()}
    split_classes(holding, survey.folders, path, lambda line: None)
    found, empty, outside = layout.group(holding, survey.folders)
    if not found:  # loose images, no class folder: the decode would find none either
        raise _placed(EngineError(layout.no_class_folders(path)), outside)
    if test_split == layout.WHOLE:  # engine eval of other images: one class's photos may be evaluated
        return
    try:
        train, test, _ = layout.choose(found, path, lambda *_: None)
    except EngineError:
        return
    if test is not None and test_split is not None:
        raise UsageError(own_split_line(path))
    if len(train) < MIN_CLASSES and not empty and not outside:  # minutes of decoding a large folder spared
        raise EngineError(one_class_line(path, len(train)) + _wrapped_hint(survey.holding, list(train)))
