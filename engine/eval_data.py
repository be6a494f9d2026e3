"""Other data than a model trained on, checked against it before an evaluation: the overrides an
evaluation takes, the run's own data and image size, another --resize, other classes or channel
counts (gray photos for a colour model and the reverse, read as `engine predict` reads them).
Shared by a checkpoint's evaluation (engine.evaluate) and an ONNX file's (export.evaluate).
"""

import dataclasses
from pathlib import Path

import torch

from engine.config import Config, fields_in, flag
from engine.data.layout import DEFAULT_TEST_SPLIT, WHOLE
from engine.errors import EngineError, UsageError


def _describe(shape, classes):
    names = ", ".join(classes[:4]) + (", ..." if len(classes) > 4 else "")
    return f"{'x'.join(map(str, shape))} images of {len(classes)} class{'es' if len(classes) != 1 else ''} ({names})"


def fit_channels(data, shape, say=print):
    """Test images of another channel count than the model's `shape` are read as `engine predict` reads
    such a photo: gray ones for a model of colour images as RGB (R = G = B, exact), colour ones for a
    model of gray images as PIL's luma (L = R x 299/1000 + G x 587/1000 + B x 114/1000, PIL's rounding).
    An image folder is read so by load_dataset(gray=True), converted before it is fitted, as predict does;
    this luma, after the fit, is for one decoded into the file cache (larger than memory) alone."""
    if not all(isinstance(x, torch.Tensor) for x in (data.train_x, data.test_x)):
        return
    if data.shape[0] == 1 and shape[0] == 3:
        data.train_x, data.test_x = (x.expand(-1, 3, -1, -1) for x in (data.train_x, data.test_x))  # views
        say("Gray images, read as RGB (R = G = B) for a model of colour images, as engine predict reads them")
    elif data.shape[0] == 3 and shape[0] == 1:
        from engine.data import COLOUR_AS_GRAY

        data.train_x, data.test_x = data.train_x[:, :1], luma(data.test_x)  # evaluation reads only test_x
        say(COLOUR_AS_GRAY)


def luma(x, chunk=4096):
    """(N, 3, H, W) uint8 RGB as (N, 1, H, W) uint8 gray, as PIL's convert("L") computes it."""
    weights = torch.tensor([19595, 38470, 7471], dtype=torch.int32).view(1, 3, 1, 1)  # x 65536, summing to 65536
    return torch.cat([((part.to(torch.int32) * weights).sum(1, keepdim=True) + 32768) >> 16
                      for part in x.split(chunk)] or [x[:, :1].to(torch.int32)]).to(torch.uint8)


def labels_for(source, shape, classes, data, data_name, given=True):
    """`data`'s test labels as indices into a model's `classes`, which it was trained on at `shape`.

    Classes are matched by name, so another source of the same data may list them in another
    order or hold only some of them; another image shape or an unknown class is one line, naming
    --data where the command `given` it, else the run's own data path (changed since it trained).
    """
    unknown = [name for name in data.classes if name not in classes]
    if list(data.shape) != list(shape) or unknown:
        differs = ""
        resizable = data.shape[0] == shape[0] and Path(str(data_name)).expanduser().exists()  # an image folder
        if list(data.shape) != list(shape) and resizable and not unknown:
            differs = f"; --image-size {shape[1]}x{shape[2]} resizes them to the model's"
        elif data.shape[0] == 3 and shape[0] == 1 and not unknown:
            differs = "; the model takes gray images: evaluate a grayscale copy of the photos"
        elif unknown:  # the first names of two long lists look alike: name the ones the model does not know
            from engine.data.classes import shown_name

            shown = ", ".join(shown_name(name, classes, "the model") for name in unknown[:4]) + (
                f" and {len(unknown) - 4} more" if len(unknown) > 4 else "")
            differs = f"; it has classes the model was not trained on: {shown}"
        named = f"--data {data_name} has" if given else f"its data {data_name} now has"  # no flag the user did not give
        raise EngineError(f"{source} was trained on {_describe(shape, classes)}, "
                          f"but {named} {_describe(data.shape, data.classes)}{differs}")
    return torch.tensor([classes.index(name) for name in data.classes])[data.test_y]  # (M,) int64


EVAL_FLAGS = tuple(f.name for f in fields_in("data", "runtime"))  # what engine eval's flags set
RUN_DATA = ("data", "data_dir", "cache_dir", "seed", "image_size", "resize", "test_split")  # what chose and shaped a run's images


def check_overrides(overrides, allowed, what, refused=()):
    """One UsageError for an override key an evaluation does not take (a misspelling, a training
    setting): `allowed` the keys it reads; `refused` those named apart, with their reason."""
    if not isinstance(overrides, dict):
        raise UsageError(f"{what}'s overrides are a dict of Config values such as {{'data': 'photos/'}}, "
                         f"not {type(overrides).__name__}")
    for name, reason in refused:
        if name in overrides:
            raise UsageError(f"{flag(name)} {reason}")
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise UsageError(f"{what} takes no {', '.join(unknown)} (it takes {', '.join(sorted(allowed))}; what the "
                         "model was trained with is kept with it)")


def check_code(model, what):
    """`model=` of an evaluation or an export: the checkpoint's code named as text, or None."""
    if model is not None and not isinstance(model, str):
        kind = f"the class {model.__name__}" if isinstance(model, type) else f"a {type(model).__name__}"
        raise UsageError(f"{what}(model=...) names the checkpoint's code as text, e.g. 'nets.py:Net' (what --model "
                         f"takes), not {kind}; the weights come from the checkpoint")


def evaluation_data(saved, given):
    """The data settings an evaluation of a trained model reads: the run's own (`saved`: what chose and
    shaped its images), then those the command `given`. Other data than the run's (--data) is read
    whole where it has no test split of its own (--test-split all), unless --test-split is given; the
    run's own data keeps the images it held out. A built-in set (--data synthetic) has its own size: an
    image folder's --image-size is not carried to it."""
    from engine.config import BUILTIN_DATASETS

    values = {k: saved[k] for k in RUN_DATA if k in saved}
    if str(given.get("data")) in BUILTIN_DATASETS:
        values.pop("image_size", None)
    if "data" in given and "test_split" not in given and not same_data(given["data"], saved.get("data")):
        values["test_split"] = WHOLE
    return {**values, **given}


def sized_to_model(shape, data):
    """The data settings an evaluation of a file without the engine's metadata (a plain .onnx: no run
    says how its images were sized) reads as its run's: an image folder or archive fitted to the
    model's own (C, H, W) `shape`, as `engine predict` fits each image to --input-size; none for a
    built-in dataset, which has its own size."""
    from engine.config import BUILTIN_DATASETS

    return {} if str(data) in BUILTIN_DATASETS else {"image_size": f"{shape[1]}x{shape[2]}"}


def check_image_size(cfg: Config, shape, source, saved):
    """An --image-size given to an evaluation must be the model's own (C, H, W) `shape`'s: one line
    before any image is decoded, naming the size to give. Leaving it out fits the images to that size
    where the run's data settings (`saved`) have an image size; else only images of that size fit."""
    from engine.pixels import parse_image_size

    if cfg.image_size is None:
        return
    height, width = parse_image_size(cfg.image_size)
    if [height, width] != list(shape[1:]):
        size = f"{shape[1]}x{shape[2]}"
        out = ("or leave it out" if saved.get("image_size") else
               f"or leave it out where every image is {size} already (images of other sizes need it)")
        raise UsageError(f"--image-size {cfg.image_size} fits the images to {height}x{width}, but {source} takes "
                         f"{size}: give --image-size {size}, {out}")


def say_resize(saved, given, data, say):
    """One line where an evaluation's --resize of image files (`data`) is not the one its model trained with."""
    from engine.config import BUILTIN_DATASETS

    trained = saved.get("resize") or "stretch"
    if given.get("resize") not in (None, trained) and data not in BUILTIN_DATASETS:
        say(f"--resize {given['resize']}: images of another size are fitted otherwise than in training "
            f"(--resize {trained}), which may lower the accuracy")


def warn_changed_test_set(fingerprint, saved, given, data, source, warn):
    """A warning where the run's own test set, read again (no --data but the run's own path, no
    --limit-test, no other size, resize rule or split), differs from the one its data `fingerprint`
    recorded: where it was held out of the training images it now holds other images, some of them
    trained on."""
    from engine.pixels import parse_image_size
    from engine.resume import test_set_changes

    def other(name, read=str):
        try:
            return name in given and read(given[name]) != read(saved.get(name))
        except (EngineError, TypeError, ValueError):
            return True

    if ("data" in given and not same_data(given["data"], saved.get("data"))) or other("image_size", parse_image_size) \
            or other("resize") or "test_split" in given or "limit_test" in given or saved.get("limit_test") is not None:
        return
    changed = test_set_changes(fingerprint, data)
    if changed:
        warn(f"the test set of {saved.get('data')} changed since {source} was trained ({changed}); where it is held "
             "out of the training images (--test-split), it now holds other images, some of them trained on")


def warn_other_split(saved, given, cfg: Config, source, warn):
    """A warning where an evaluation splits the run's own images otherwise than the run held them out
    (--test-split on them, `cfg`'s normalised value): its test images then include images it trained on."""
    if "test_split" not in given or cfg.test_split == WHOLE or not same_data(cfg.data, saved.get("data")):
        return
    held = saved.get("test_split") or DEFAULT_TEST_SPLIT
    if cfg.test_split != held or cfg.seed != saved.get("seed", 0):
        warn(f"--test-split {cfg.test_split} splits {source}'s own images otherwise than its run held them out "
             f"(--test-split {held}, seed {saved.get('seed', 0)}): the test images include images it trained on")


def load_evaluation_data(cfg: Config, saved, given, fingerprint, source, say, classes=None, gray=False):
    """The images an evaluation scores: load_dataset(cfg), save where --data names another path than
    the run's (read whole: no --test-split given) that holds the run's own images, moved or copied:
    split as the run split them (its --test-split, --val-split, seed), they give the run's data
    `fingerprint` (and their class names are the run's `classes`). Their held-out test images are
    scored then, said in one line; read whole, most of them were trained on. gray: for a model of gray
    images (load_dataset's)."""
    from engine.data import load_dataset as load

    def load_dataset(cfg, log):
        return load(cfg, log, gray)

    if not fingerprint or cfg.test_split != WHOLE or "test_split" in given or "data" not in given:
        return load_dataset(cfg, say)
    from engine.resume import data_fingerprint

    said = []  # what reading them whole says, said only where they are read whole

    def hold(line):  # the decode's own lines as it goes (a large folder decodes for minutes), once: the
        (say if line.startswith(("Decoding ", "Decoded ")) else said.append)(line)  # reads below are cached

    data = load_dataset(cfg, hold)
    split = {"test_split": saved.get("test_split"), "val_split": saved.get("val_split"), "seed": saved.get("seed", 0)}
    try:
        own = load_dataset(dataclasses.replace(cfg, **split, limit_train=saved.get("limit_train"),
                                               limit_test=saved.get("limit_test")), lambda *_: None)
    except EngineError:  # split so, these images are not the run's
        own = None
    if own is None or data_fingerprint(own) != fingerprint or (classes is not None and list(own.classes) != list(classes)):
        for line in said:
            say(line)
        return data
    held = load_dataset(dataclasses.replace(cfg, **split), say)
    say(f"{cfg.data} holds the images {source} trained on ({saved.get('data')}, moved or copied): scoring the "
        f"{len(held.test_x):,} test images its run held out (--test-split {split['test_split'] or DEFAULT_TEST_SPLIT}), "
        f"not all {len(data.test_x):,}")
    return held


def check_run_data(cfg: Config, given, source):
    """The run's own data, read from the checkpoint or the file's metadata, must still be there: one
    line saying where the path came from (the command line never named it) if it is not."""
    from engine.config import BUILTIN_DATASETS

    if "data" not in given and cfg.data not in BUILTIN_DATASETS and not Path(cfg.data).exists():
        raise EngineError(f"{source} was trained on {cfg.data}, which is not there any more; pass --data with the "
                          "same classes and image size to evaluate it (the run's images moved elsewhere are "
                          "recognised: the test images it held out are scored)")


def same_data(a, b):
    """Whether two --data values name the same source (a built-in name, or the same path)."""
    if a is None or b is None:
        return a == b
    return a == b or Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
