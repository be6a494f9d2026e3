"""evaluate(): test loss and accuracy of a model on a loader; evaluate_checkpoint() for `engine eval`.

Test loss is the mean cross-entropy per test image (the tutorial divided its sum by the number
of classes, a bug). Eval batches have one fixed shape, so a compiled model compiles once; the last,
smaller batch is filled with the images before it, scored on its own images (`evaluate_sums`). With
test-time augmentation (`tta`, a level: `tta_views`) the logits are a weighted mean over views of
each image, every view of the batch's shape and memory format. `evaluate` can also count the
confusion matrix (engine/confusion.py), whose per-class results `engine eval` prints.
"""

import sys
import time

import torch
import torch.nn.functional as F

from engine.checkpoint import load, model_from_checkpoint
from engine.config import Config
from engine.errors import EngineError, UsageError
from engine.confusion import Confusion
from engine.data import dataset_label
from engine.distributed import Ranks
from engine.faults import check_evaluated
from engine.inference import CompiledInference
from engine.isolation import kept_global_state
from engine.models.memory_format import fit_memory_format
from engine.loader import BatchLoader
from engine.eval_data import (EVAL_FLAGS, check_code, check_image_size, check_overrides, check_run_data,
                              evaluation_data, fit_channels, labels_for, load_evaluation_data, say_resize,
                              warn_changed_test_set, warn_other_split)
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


def remainder_logits(model, x, tta=0):
    """`predict` on a batch smaller than the evaluation's one shape (a DDP rank's part, unpadded), eagerly: a model
    compiled for that shape (CompiledInference) runs the module it was compiled from, a torch.compile'd one
    its eager forward (torch.compiler's force_eager stance), so no other shape is compiled for one batch."""
    if isinstance(model, CompiledInference):
        if model.eager is None:  # a package loaded without its module: the batch padded to the one shape
            padded = torch.cat([x, x.new_zeros((model.shape[0] - len(x), *x.shape[1:]))])
            return predict(model, padded, tta)[:len(x)]
        model = model.eager
    if "torch._dynamo" not in sys.modules:  # nothing was compiled in this process
        return predict(model, x, tta)
    with torch.compiler.set_stance("force_eager"):
        return predict(model, x, tta)


def tta_level(cfg: Config, spec):
    """The run's --tta level for data whose InputSpec `spec` trains with flips; 0 for the rest (a
    mirrored digit is not the same digit). Level 2 on images under 2 pixels a side, which its
    one-pixel shift cannot reflect into, is refused in one line."""
    level = int(cfg.tta) if spec.flip else 0
    if level == 2 and min(spec.shape[1:]) < 2:
        raise UsageError(f"--tta 2 moves each image one pixel into a reflected border, which needs images of at least "
                         f"2 pixels a side, not {'x'.join(map(str, spec.shape[1:]))}: use --tta 1 (the mirror alone)")
    return level


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
    seen, previous = 0, None
    with torch.no_grad(), runtime.autocast():
        for x, y, count in loader.epoch(0):
            if count < len(x) and previous is not None:  # the last batch, padded with zeros to the one shape:
                # its images, then those just before them, so a forward using the batch's statistics sees
                # no zeros, nor a batch of one image (BatchNorm1d raises), and a compiled model one shape
                x = torch.cat([x[:count], previous[count - len(x):]])
                logits = predict(model, x, tta)
            elif count < len(x):  # a rank's part smaller than a batch (DDP): its images alone, eagerly
                x = x[:count]
                logits = remainder_logits(model, x, tta)
            else:
                logits = predict(model, x, tta)
            previous = x
            if logits.ndim == 1 and len(x) == 1:  # a forward that drops a single image's batch dimension (x.squeeze())
                logits = logits[None]
            logits = logits[:count].float()  # (count, classes): padded rows dropped
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


@kept_global_state()
def evaluate_checkpoint(path, overrides, log=print, model=None):
    """Test loss and accuracy of the checkpoint at `path` on its own dataset or on `overrides`' data.

    overrides: config values given on the command line (data, data_dir, limit_test, device, ...).
    model: a user model's code named again (`--model nets.py:Net`), which its checkpoint needs.
    """
    from engine.models.reference import parse_model

    check_overrides(overrides, EVAL_FLAGS, "evaluate_checkpoint")
    log = (lambda *_: None) if log is None else log  # log=None: silent, as the caller meant
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
    check_image_size(cfg, checkpoint.spec.shape, path, saved)
    say_resize(saved, overrides, cfg.data, say)
    data = load_evaluation_data(cfg, saved, overrides, checkpoint.fingerprint, path, say,  # a split folder refuses
                                checkpoint.spec.classes, gray=checkpoint.spec.shape[0] == 1)  # --test-split
    warn_other_split(saved, overrides, cfg, path, warn)
    warn_changed_test_set(checkpoint.fingerprint, saved, overrides, data, path, warn)
    spec = checkpoint.spec
    fit_channels(data, spec.shape, say)
    fit_memory_format(cfg, runtime, rebuilt, checkpoint.ref, spec.shape, say)
    data.test_y = labels_for(path, spec.shape, spec.classes, data, cfg.data, "data" in overrides)
    model = runtime.prepare(rebuilt, compile=runtime.compile and not runtime.ahead_of_time, shape=spec.shape)
    loader = BatchLoader(data.test_x, data.test_y, cfg.eval_batch_size or cfg.batch_size, spec.mean, spec.std,
                         device=runtime.device, train=False, channels_last=cfg.channels_last)
    started = time.perf_counter()
    compile_seconds = None
    if runtime.ahead_of_time and runtime.plans_compile:  # compiled where it pays (engine/compile_plan.py)
        from engine.compile_plan import keep_compiled_code
        from engine.inference import choose_inference
        from engine.models.reference import reopen
        from engine.models.user_code import with_neighbours

        keep_compiled_code(cfg.resolved_cache_dir())
        code_now = with_neighbours(reopen(checkpoint.ref, code, path))  # what the caches measure: the code as it is
        model, compile_seconds = choose_inference(model.eval(), loader, runtime, code_now, path,
                                                  cfg.resolved_cache_dir(), say)
    elif runtime.ahead_of_time:
        from engine.inference import compile_inference

        if not cfg.quiet:
            log("compiling the model ahead of time (torch.export + AOTInductor) ...")
        try:
            model = compile_inference(model, (loader.batch_size, *spec.shape), runtime, loader.memory_format)
            compile_seconds = time.perf_counter() - started
        except EngineError as error:  # as the measured path (choose_inference) says it
            say(f"{error}: evaluating eagerly")
    compiled = time.perf_counter()
    tta, note = tta_level(cfg, spec), tta_note(cfg, spec)
    if note:
        say(note)
    confusion = Confusion(spec.classes, runtime.device)  # per-class results: an index_add per batch
    loss, acc = evaluate(model, loader, runtime, tta, confusion)
    check_evaluated(loss, path, cfg.data)
    return {"test_loss": loss, "test_acc": acc, "images": len(data.test_x), "data": cfg.data, "epoch": checkpoint.epochs_done,
            "tta": tta, "seconds": time.perf_counter() - compiled, "precision": runtime.resolved()["precision"],
            "compile_seconds": compile_seconds, "ema": checkpoint.ema is not None,  # the weight average evaluated
            "model": checkpoint.ref.name, "confusion": confusion.cpu()}


def as_json(result):
    """`engine eval --json`'s object: an evaluate_checkpoint or evaluate_onnx result with its
    confusion matrix spelled out (classes, matrix, per_class, most_confused)."""
    plain = {k: v for k, v in result.items() if k != "confusion"}
    return {**plain, **result["confusion"].to_dict()}


def picture_title(result):
    """'cifar_cnn on synthetic': what an evaluation's confusion picture is of."""
    return f"{result['model']} on {dataset_label(result['data'])}"
