"""Inference on an exported file: the Python API (`export.load`) and `engine predict`.

    import export
    model = export.load("model.onnx")
    model.classes                                   # ['airplane', 'automobile', ...]
    model.predict(["cat.jpg", pil_image, uint8_array], topk=3)  # [[('cat', 0.91), ...], ...]

Preprocessing comes from the file's metadata (see export/images.py); a file without it takes
`input_size` and `classes` instead.
"""

import json

import numpy as np

from engine.errors import EngineError, UsageError
from export import images as imaging
from export.metadata import REQUIRED, ModelInfo


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class Classifier:
    """An exported model in an onnxruntime session, with the preprocessing its metadata describes."""

    def __init__(self, path, *, input_size=None, classes=None, device="auto", threads=None):
        from export.session import load_checked, open_session

        proto = load_checked(path)
        props = {p.key: p.value for p in proto.metadata_props}
        if (input_size or classes) and all(key in props for key in REQUIRED):
            raise UsageError(f"{path} holds the engine's metadata (its classes, input size and resize rule): "
                             "--input-size and --classes are for a file without it; leave them out")
        if input_size or classes:
            self.info = ModelInfo.from_flags(input_size, classes)
        else:
            self.info = ModelInfo.from_props(props, str(path))
        self.session, self.provider = open_session(path, device=device, threads=threads)
        self.input_name = self.session.get_inputs()[0].name
        self._check_shapes(path)

    def _check_shapes(self, path):
        declared = self.session.get_inputs()[0].shape  # e.g. ['batch', 3, 32, 32]
        fixed = [d for d in declared[1:] if isinstance(d, int)]
        if len(declared) != 4 or (len(fixed) == 3 and fixed != list(self.info.input_size)):
            raise EngineError(f"{path} takes input {declared}, not images of {self.info.input_size}")
        outputs = self.session.get_outputs()[0].shape
        if len(outputs) != 2 or (isinstance(outputs[1], int) and outputs[1] != len(self.info.classes)):
            raise EngineError(f"{path} gives outputs {outputs}, not logits for {len(self.info.classes)} classes")

    @property
    def classes(self):
        return list(self.info.classes)

    def preprocess(self, images):
        """float32 (N, C, H, W) in [0, 1], the file's input, for paths, PIL images or uint8 arrays."""
        return imaging.batch(images, self.info.input_size, self.info.rule)

    def logits(self, images):
        """(N, classes) float32 logits; `images` as for `preprocess`, or an already prepared float32 batch."""
        if isinstance(images, np.ndarray) and images.dtype == np.float32 and images.ndim == 4:
            batch = images
        else:
            batch = self.preprocess(images)
        return self.session.run(None, {self.input_name: batch})[0]

    def predict(self, images, topk=1):
        """For each image, its `topk` (class, probability) pairs, most likely first."""
        probabilities = softmax(self.logits(images))
        k = max(1, min(topk, len(self.info.classes)))
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        return [[(self.info.classes[i], float(row[i])) for i in top] for row, top in zip(probabilities, order)]




def predict_files(model: Classifier, paths, topk=3, batch_size=64, as_json=False, say=print):
    """`engine predict`: every image under `paths`, in batches; one line (or JSON object) per image."""
    files = imaging.expand(paths)
    for path in files:  # every header first: a bad file fails before any output
        imaging.open_image(path).close()
    results = []  # every prediction before any output: a file that fails to decode fails alone, as one line
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        results += zip(chunk, model.predict(chunk, topk=topk))
    for path, top in results:
        if as_json:
            say(json.dumps({"image": str(path), "top": [{"class": c, "probability": round(p, 6)} for c, p in top]}))
        else:
            say(f"{path}: " + ", ".join(f"{c} {p * 100:.1f}%" for c, p in top))
    return len(files)
