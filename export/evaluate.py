"""`engine eval MODEL.onnx`: test accuracy, loss and per-class results through onnxruntime, as for a checkpoint.

The data is the file's own (its metadata names the dataset and the training config) or `--data`;
images go in as a client sends them (uint8 / 255, float32, NCHW), classes are matched by name.
"""

import time
from pathlib import Path

import numpy as np

from engine.config import Config
from engine.errors import EngineError
from engine.isolation import kept_global_state


def cross_entropy_sum(logits, labels):
    """Sum over images of -log softmax(logits)[label], in float64."""
    logits = logits.astype(np.float64)
    top = logits.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite logits give NaN, refused after (faults)
        log_sum = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
        return float((log_sum - logits[np.arange(len(labels)), labels]).sum())


ONNX_IGNORED = ("amp", "amp_dtype", "compile", "compile_mode", "channels_last", "triton", "tta")  # PyTorch's choices


@kept_global_state()
def evaluate_onnx(path, overrides, *, input_size=None, classes=None, log=print):
    """{test_loss, test_acc, images, data, provider, model, confusion} of the ONNX file at `path`.
    overrides: engine eval's flags as Config values (data, limit_test, batch_size, device, ...); the
    PyTorch-only ones (amp, compile, tta, ...) are refused, as a misspelled one is."""
    import torch

    from engine.confusion import Confusion
    from engine.faults import check_evaluated
    from engine.eval_data import (EVAL_FLAGS, check_image_size, check_overrides, check_run_data, evaluation_data,
                                 fit_channels, labels_for, load_evaluation_data, say_resize, sized_to_model,
                                 warn_changed_test_set, warn_other_split)
    from engine.runtime import warn
    from export.predict import Classifier

    off = {"tta": 0, "amp": False, "compile": False, "triton": False, "channels_last": False}  # what the file does: taken
    overrides = {k: v for k, v in overrides.items() if not (k in off and v is not None and v == off[k])}
    reason = "applies to PyTorch checkpoints; an .onnx file runs in onnxruntime"
    check_overrides(overrides, [k for k in EVAL_FLAGS if k not in ONNX_IGNORED], "evaluate_onnx",
                    [(name, reason) for name in ONNX_IGNORED])
    log = (lambda *_: None) if log is None else log  # log=None: silent, as the caller meant
    device = overrides.get("device", "auto")
    model = Classifier(path, input_size=input_size, classes=classes, device=device)
    info = model.info
    if "data" not in overrides and not info.config.get("data"):
        raise EngineError(f"{path} does not say which data it was trained on; pass --data")
    saved = info.config or sized_to_model(info.input_size, overrides["data"])  # a plain file: as predict sizes
    cfg = Config(**evaluation_data(saved, overrides))
    batch = cfg.eval_batch_size or cfg.batch_size
    check_run_data(cfg, overrides, path)
    check_image_size(cfg, info.input_size, path, saved)
    say_resize({"resize": info.rule}, overrides, cfg.data, (lambda *_: None) if cfg.quiet else log)
    say = (lambda *_: None) if cfg.quiet else log
    data = load_evaluation_data(cfg, info.config, overrides, info.fingerprint, path, say, info.classes,
                                gray=info.input_size[0] == 1)
    warn_other_split(info.config, overrides, cfg, path, warn)
    warn_changed_test_set(info.fingerprint, info.config, overrides, data, path, warn)
    fit_channels(data, info.input_size, (lambda *_: None) if cfg.quiet else log)
    labels = labels_for(path, info.input_size, info.classes, data, cfg.data,
                        "data" in overrides).numpy()  # classes matched by name
    loss_sum, correct = 0.0, 0
    confusion = Confusion(info.classes)  # the same per-class results as a checkpoint's evaluation
    started = time.perf_counter()
    for start in range(0, len(labels), batch):
        first = max(0, min(start, len(labels) - batch))  # the last batch: filled with the images before it
        images = data.test_x[first:start + batch].numpy().astype(np.float32) / 255  # as a client sends them
        logits = model.logits(images)[start - first:]  # as engine.evaluate scores a checkpoint's
        y = labels[start:start + batch]
        loss_sum += cross_entropy_sum(logits, y)
        pred = logits.argmax(1)  # (B,)
        correct += int((pred == y).sum())
        confusion.add(torch.from_numpy(y), torch.from_numpy(pred))
    check_evaluated(loss_sum / len(labels), path, cfg.data)
    return {"test_loss": loss_sum / len(labels), "test_acc": correct / len(labels), "images": len(labels),
            "data": cfg.data, "provider": model.provider, "model": Path(path).name, "confusion": confusion,
            "seconds": time.perf_counter() - started}
