"""`engine eval MODEL.onnx`: test accuracy, loss and per-class results through onnxruntime, as for a checkpoint.

The data is the file's own (its metadata names the dataset and the training config) or `--data`;
images go in as a client sends them (uint8 / 255, float32, NCHW), classes are matched by name.
"""

from pathlib import Path

import numpy as np

from engine.config import Config
from engine.errors import EngineError


def cross_entropy_sum(logits, labels):
    """Sum over images of -log softmax(logits)[label], in float64."""
    logits = logits.astype(np.float64)
    top = logits.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
    return float((log_sum - logits[np.arange(len(labels)), labels]).sum())


def evaluate_onnx(path, overrides, *, input_size=None, classes=None, log=print):
    """{test_loss, test_acc, images, data, provider, model, confusion} of the ONNX file at `path`."""
    import torch

    from engine.confusion import Confusion
    from engine.data import load_dataset
    from engine.evaluate import evaluation_data, labels_for
    from export.predict import Classifier

    device = overrides.get("device", "auto")
    model = Classifier(path, input_size=input_size, classes=classes, device=device)
    info = model.info
    if "data" not in overrides and not info.config.get("data"):
        raise EngineError(f"{path} does not say which data it was trained on; pass --data")
    known = {k: v for k, v in overrides.items()
             if k in ("data", "data_dir", "cache_dir", "limit_test", "batch_size", "quiet", "image_size", "resize", "test_split")}
    cfg = Config(**evaluation_data(info.config, known))
    data = load_dataset(cfg, (lambda *_: None) if cfg.quiet else log)
    labels = labels_for(path, info.input_size, info.classes, data, cfg.data).numpy()  # classes matched by name
    loss_sum, correct = 0.0, 0
    confusion = Confusion(info.classes)  # the same per-class results as a checkpoint's evaluation
    for start in range(0, len(labels), cfg.batch_size):
        images = data.test_x[start:start + cfg.batch_size].numpy().astype(np.float32) / 255  # as a client sends them
        logits = model.logits(images)
        y = labels[start:start + cfg.batch_size]
        loss_sum += cross_entropy_sum(logits, y)
        pred = logits.argmax(1)  # (B,)
        correct += int((pred == y).sum())
        confusion.add(torch.from_numpy(y), torch.from_numpy(pred))
    return {"test_loss": loss_sum / len(labels), "test_acc": correct / len(labels), "images": len(labels),
            "data": cfg.data, "provider": model.provider, "model": Path(path).name, "confusion": confusion}
