"""evaluate(): test loss and accuracy of a model on a loader; evaluate_checkpoint() for `engine eval`.

Test loss is the mean cross-entropy per test image (the tutorial divided its sum by the number
of classes, a bug). Eval batches have one fixed shape, so a compiled model compiles once. With
test-time augmentation (`tta`, a level: `tta_views`) the logits are a weighted mean over views of
each image, every view of the batch's shape and memory format. `evaluate` can also count the
confusion matrix (engine/confusion.py), whose per-class results `engine eval` prints.
"""

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.checkpoint import load, model_from_checkpoint
from engine.config import Config, fields_in, flag
from engine.confusion import Confusion
from engine.data import dataset_label, load_dataset
from engine.data.layout import WHOLE
from engine.distributed import Ranks
from engine.errors import EngineError, UsageError
from engine.isolation import kept_global_state
from engine.loader import BatchLoader
from engine.resume import test_set_changes
from engine.runtime import Runtime, setup_backends, warn


def tta_views(x, level):
    """(weight, view) pairs of a batch x (B, C, H, W), one at a time, whose weighted logits `predict`
    sums; the weights sum to 1. Level 1: x and its mirror, 1/2 each. Level 2 (airbench94's `infer`):
    half on those two, half on the mirrored pair of each of two 1-pixel translations (up-left and
    down-right, into a reflected border): 1/4, 1/4 and 4 x 1/8. Each view has x's shape and memory
    format, so a compiled (or ahead-of-time compiled) model sees one input, whatever the level."""
    if level == 2:
        B, C, H, W = x.shape
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
            else torch.contiguous_format
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")  # (B, C, H + 2, W + 2)
        yield 1 / 4, x
        yield 1 / 4, x.flip(3)
        for top in (0, 2):  # the content moves down-right by one pixel, then up-left
            shifted = padded[:, :, top:top + H, top:top + W].contiguous(memory_format=fmt)  # (B, C, H, W)
            yield 1 / 8, shifted
            yield 1 / 8, shifted.flip(3)
    elif level == 1:
        yield 1 / 2, x
        yield 1 / 2, x.flip(3)
    else:
        yield 1.0, x


def predict(model, x, tta=0):
    """Logits (B, classes) of a batch x (B, C, H, W); with `tta` (level 1 or 2; True is 1) the
    weighted mean over `tta_views`, summed in float32: one forward pass a view, so evaluation costs
    2x (level 1) or 6x (level 2) as much."""
    if not tta:
        return model(x)
    return sum(weight * model(view).float() for weight, view in tta_views(x, int(tta)))


def tta_level(cfg: Config, spec):
    """The run's --tta level for data whose InputSpec `spec` trains with flips; 0 for the rest (a
    mirrored digit is not the same digit)."""
    return int(cfg.tta) if spec.flip else 0


def tta_note(cfg: Config, spec):
    """The one line that says --tta does nothing on this data, or None."""
    if cfg.tta and not spec.flip:
        return (f"--tta {int(cfg.tta)}: this data does not train with flips (single-channel images, often digits or "
                "scans, where a mirror image is another image), so evaluations run on each image alone")
    return None


def evaluate(model, loader: BatchLoader, runtime: Runtime, tta=False, confusion: Confusion | None = None):
    """(mean loss per image, accuracy) over every image of `loader`; `tta`: see `predict`.
    confusion: a Confusion (on runtime.device) that also counts each image's (true, predicted)
    pair, summed over the ranks under DDP; without it nothing more is done."""
    loss_sum, correct, seen = evaluate_sums(model, loader, runtime, tta, confusion)
    return loss_sum / seen, correct / seen


def evaluate_sums(model, loader: BatchLoader, runtime: Runtime, tta=False, confusion: Confusion | None = None):
    """(summed loss, images right, images) over every image of `loader`, all ranks' under DDP (see
    `evaluate`)."""
    model.eval()
    loss_sum = torch.zeros((), device=runtime.device, dtype=torch.float64)
    correct = torch.zeros((), device=runtime.device, dtype=torch.int64)
    seen = 0
    with torch.no_grad(), runtime.autocast():
        for x, y, count in loader.epoch(0):
            logits = predict(model, x, tta)[:count].float()  # (count, classes): padded rows dropped
            loss_sum += F.cross_entropy(logits, y[:count], reduction="sum").double()
            pred = logits.argmax(1)  # (count,)
            correct += (pred == y[:count]).sum()
            if confusion is not None:
                confusion.add(y[:count], pred)
            seen += count
    if loader.world > 1:  # each rank evaluated its own part (see BatchLoader): whole-set totals
        seen = torch.tensor(seen, device=runtime.device)
        extra = (confusion.counts,) if confusion is not None else ()
        loss_sum, correct, seen, *counts = Ranks(world=loader.world).sum(loss_sum, correct, seen, *extra)
        if confusion is not None:
            confusion.counts = counts[0]
    return loss_sum.item(), int(correct.item()), int(seen)


def evaluate_screened(model, parts, runtime: Runtime, short, tta=False, confusion: Confusion | None = None):
    """`evaluate` over the images of the BatchLoaders `parts` together (one test set in parts), read in
    order until `short(correct, seen)` of those read so far says True (asked before each part after
    the first). Returns (mean loss, accuracy, images read, whole): over every image when `whole`."""
    loss_sum, correct, seen = 0.0, 0, 0
    for i, part in enumerate(parts):
        if i and short(correct, seen):
            return loss_sum / seen, correct / seen, seen, False
        more = evaluate_sums(model, part, runtime, tta, confusion)
        loss_sum, correct, seen = loss_sum + more[0], correct + more[1], seen + more[2]
    return loss_sum / seen, correct / seen, seen, True


def _describe(shape, classes):
    names = ", ".join(classes[:4]) + (", ..." if len(classes) > 4 else "")
    return f"{'x'.join(map(str, shape))} images of {len(classes)} class{'es' if len(classes) != 1 else ''} ({names})"


def fit_channels(data, shape, say=print):
    """Test images of another channel count than the model's `shape` are read as `engine predict` reads
    such a photo: gray ones for a model of colour images as RGB (R = G = B, exact), colour ones for a
    model of gray images as PIL's luma (L = R x 299/1000 + G x 587/1000 + B x 114/1000, PIL's rounding;
    exact where the images need no resize, predict converting before it resizes)."""
    if not all(isinstance(x, torch.Tensor) for x in (data.train_x, data.test_x)):
        return
    if data.shape[0] == 1 and shape[0] == 3:
        data.train_x, data.test_x = (x.expand(-1, 3, -1, -1) for x in (data.train_x, data.test_x))  # views
        say("Gray images, read as RGB (R = G = B) for a model of colour images, as engine predict reads them")
    elif data.shape[0] == 3 and shape[0] == 1:
        data.train_x, data.test_x = data.train_x[:, :1], luma(data.test_x)  # evaluation reads only test_x
        say("Colour images, read as gray (PIL's luma) for a model of gray images, as engine predict reads them")


def luma(x, chunk=4096):
    """(N, 3, H, W) uint8 RGB as (N, 1, H, W) uint8 gray, as PIL's convert("L") computes it."""
    weights = torch.tensor([19595, 38470, 7471], dtype=torch.int32).view(1, 3, 1, 1)  # x 65536, summing to 65536
    return torch.cat([((part.to(torch.int32) * weights).sum(1, keepdim=True) + 32768) >> 16
                      for part in x.split(chunk)] or [x[:, :1].to(torch.int32)]).to(torch.uint8)


def labels_for(source, shape, classes, data, data_name):
    """`data`'s test labels as indices into a model's `classes`, which it was trained on at `shape`.

    Classes are matched by name, so another source of the same data may list them in another
    order or hold only some of them; another image shape or an unknown class is one line.
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
            shown = ", ".join(unknown[:4]) + (f" and {len(unknown) - 4} more" if len(unknown) > 4 else "")
            differs = f"; it has classes the model was not trained on: {shown}"
        raise EngineError(f"{source} was trained on {_describe(shape, classes)}, "
                          f"but --data {data_name} has {_describe(data.shape, data.classes)}{differs}")
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
    run's own data keeps the images it held out."""
    values = {k: saved[k] for k in RUN_DATA if k in saved}
    if "data" in given and "test_split" not in given and not same_data(given["data"], saved.get("data")):
        values["test_split"] = WHOLE
    return {**values, **given}


def check_image_size(cfg: Config, shape, source):
    """An --image-size given to an evaluation must be the model's own (C, H, W) `shape`'s: one line
    before any image is decoded, naming the size to give."""
    from engine.pixels import parse_image_size

    if cfg.image_size is None:
        return
    height, width = parse_image_size(cfg.image_size)
    if [height, width] != list(shape[1:]):
        raise UsageError(f"--image-size {cfg.image_size} fits the images to {height}x{width}, but {source} takes "
                         f"{shape[1]}x{shape[2]}: give --image-size {shape[1]}x{shape[2]}, or leave it out")


def say_resize(saved, given, data, say):
    """One line where an evaluation's --resize of image files (`data`) is not the one its model trained with."""
    from engine.config import BUILTIN_DATASETS

    trained = saved.get("resize") or "stretch"
    if given.get("resize") not in (None, trained) and data not in BUILTIN_DATASETS:
        say(f"--resize {given['resize']}: images of another size are fitted otherwise than in training "
            f"(--resize {trained}), which may lower the accuracy")


def check_run_data(cfg: Config, given, source):
    """The run's own data, read from the checkpoint or the file's metadata, must still be there: one
    line saying where the path came from (the command line never named it) if it is not."""
    from engine.config import BUILTIN_DATASETS

    if "data" not in given and cfg.data not in BUILTIN_DATASETS and not Path(cfg.data).exists():
        raise EngineError(f"{source} was trained on {cfg.data}, which is not there any more; pass --data with the "
                          "same classes and image size to evaluate it")


def same_data(a, b):
    """Whether two --data values name the same source (a built-in name, or the same path)."""
    if a is None or b is None:
        return a == b
    return a == b or Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


@kept_global_state()
def evaluate_checkpoint(path, overrides, log=print, model=None):
    """Test loss and accuracy of the checkpoint at `path` on its own dataset or on `overrides`' data.

    overrides: config values given on the command line (data, data_dir, limit_test, device, ...).
    model: a user model's code named again (`--model nets.py:Net`), which its checkpoint needs.
    """
    from engine.models.reference import parse_model

    check_overrides(overrides, EVAL_FLAGS, "evaluate_checkpoint")
    check_code(model, "evaluate_checkpoint")
    checkpoint = load(path)
    code = parse_model(model) if model else None  # before the data is read: a bad --model is one line
    # The checkpoint decides what was trained on; how to run (device, amp, batch, limits) is this
    # command's own flags and defaults, not the training run's (save that a run trained in fp32 is
    # evaluated in fp32 unless --amp/--amp-dtype is given: below).
    saved = checkpoint.config
    cfg = Config(**evaluation_data(saved, overrides))
    say = (lambda *_: None) if cfg.quiet else log
    rebuilt = model_from_checkpoint(checkpoint, path, code, say)
    runtime = Runtime.from_config(cfg)
    trained_fp32 = checkpoint.runtime.get("precision") == "fp32" and not {"amp", "amp_dtype"} & set(overrides)
    if runtime.device.type == "cpu" and runtime.amp_dtype == torch.bfloat16 and trained_fp32:
        runtime.amp_dtype = None  # the accuracy the run printed for this checkpoint is its fp32 one: reproduce it
        say("Precision: fp32, as the run trained and evaluated this checkpoint (--amp-dtype bf16 evaluates in bf16)")
    setup_backends(runtime.device, cfg.seed)
    check_run_data(cfg, overrides, path)
    check_image_size(cfg, checkpoint.spec.shape, path)
    say_resize(saved, overrides, cfg.data, say)
    data = load_dataset(cfg, say)
    own_images = not {"data", "limit_test", "image_size", "resize", "test_split"} & set(overrides)
    if own_images and saved.get("limit_test") is None:
        changed = test_set_changes(checkpoint.fingerprint, data)  # the run's own test set, read again
        if changed:
            warn(f"the test set of {cfg.data} changed since {path} was trained ({changed}); where it is held out of "
                 "the training images (--test-split), it now holds other images, some of them trained on")
    spec = checkpoint.spec
    fit_channels(data, spec.shape, say)
    data.test_y = labels_for(path, spec.shape, spec.classes, data, cfg.data)
    model = runtime.prepare(rebuilt, compile=runtime.compile and not runtime.ahead_of_time)
    loader = BatchLoader(data.test_x, data.test_y, cfg.eval_batch_size or cfg.batch_size, spec.mean, spec.std,
                         device=runtime.device, train=False, channels_last=cfg.channels_last)
    started = time.perf_counter()
    compile_seconds = None
    if runtime.ahead_of_time and runtime.plans_compile:  # compiled where it pays (engine/compile_plan.py)
        from engine.compile_plan import keep_compiled_code
        from engine.inference import choose_inference

        keep_compiled_code(cfg.resolved_cache_dir())
        model, compile_seconds = choose_inference(model.eval(), loader, runtime, checkpoint.ref, path,
                                                  cfg.resolved_cache_dir(), say)
    elif runtime.ahead_of_time:
        from engine.inference import compile_inference

        if not cfg.quiet:
            log("compiling the model ahead of time (torch.export + AOTInductor) ...")
        model = compile_inference(model, (loader.batch_size, *spec.shape), runtime, loader.memory_format)
        compile_seconds = time.perf_counter() - started
    compiled = time.perf_counter()
    tta, note = tta_level(cfg, spec), tta_note(cfg, spec)
    if note:
        say(note)
    confusion = Confusion(spec.classes, runtime.device)  # per-class results: an index_add per batch
    loss, acc = evaluate(model, loader, runtime, tta, confusion)
    return {"test_loss": loss, "test_acc": acc, "images": len(data.test_x), "data": cfg.data, "epoch": checkpoint.epochs_done,
            "tta": tta, "seconds": time.perf_counter() - compiled,
            "compile_seconds": compile_seconds,
            "model": checkpoint.ref.name, "confusion": confusion.cpu()}


def as_json(result):
    """`engine eval --json`'s object: an evaluate_checkpoint or evaluate_onnx result with its
    confusion matrix spelled out (classes, matrix, per_class, most_confused)."""
    plain = {k: v for k, v in result.items() if k != "confusion"}
    return {**plain, **result["confusion"].to_dict()}


def picture_title(result):
    """'cifar_cnn on synthetic': what an evaluation's confusion picture is of."""
    return f"{result['model']} on {dataset_label(result['data'])}"
