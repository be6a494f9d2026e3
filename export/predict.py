"""Inference on an exported file: the Python API (`export.load`) and `engine predict`.

    import export
    model = export.load("model.onnx")
    model.classes                                   # ['airplane', 'automobile', ...]
    model.predict(["cat.jpg", pil_image, uint8_array], topk=3)  # [[('cat', 0.91), ...], ...]

Preprocessing comes from the file's metadata (see export/images.py); a file without it takes
`input_size` and `classes` instead.
"""

import json
import os
import sys

import numpy as np

from engine.confusion import printable
from engine.errors import EngineError, UsageError, one_line
from export import images as imaging
from export import outputs
from export.metadata import REQUIRED, ModelInfo


class Classifier:
    """An exported model in an onnxruntime session, with the preprocessing its metadata describes."""

    def __init__(self, path, *, input_size=None, classes=None, device="auto", threads=None):
        from export.session import load_checked, open_session

        path = os.fspath(path) if isinstance(path, os.PathLike) else path
        if device not in DEVICES:
            raise UsageError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
        threads = None if threads is None else check_whole("threads", threads)  # None: one per physical core
        proto = load_checked(path)
        props = {p.key: p.value for p in proto.metadata_props}
        if (input_size or classes) and all(key in props for key in REQUIRED):
            raise UsageError(f"{path} holds the engine's metadata (its classes, input size and resize rule): "
                             "--input-size and --classes are for a file without it; leave them out")
        self.flagged = bool(input_size or classes)  # classes and size from --classes/--input-size, not the file
        if self.flagged:
            self.info = ModelInfo.from_flags(input_size, classes)
        else:
            self.info = ModelInfo.from_props(props, str(path))
        self.path = path
        self.output = outputs.output_kind(proto)  # logits, or probabilities where the graph ends in a softmax
        self.session, self.provider = open_session(path, device=device, threads=threads, model=proto)
        self.input_name = self.session.get_inputs()[0].name
        self.fixed_batch = self._check_shapes(path)

    def _check_shapes(self, path):
        """The file's batch size where its graph fixes one (run one such batch at a time), else None."""
        declared = self.session.get_inputs()[0].shape  # e.g. ['batch', 3, 32, 32]
        fixed = [d for d in declared[1:] if isinstance(d, int)]
        if len(declared) != 4 or (len(fixed) == 3 and fixed != list(self.info.input_size)):
            raise EngineError(f"{path} takes input {declared}, not images of {self.info.input_size}")
        outputs = self.session.get_outputs()[0].shape
        if len(outputs) != 2 or (isinstance(outputs[1], int) and outputs[1] != len(self.info.classes)):
            raise EngineError(f"{path} gives outputs {outputs}, not logits for {len(self.info.classes)} classes")
        return declared[0] if isinstance(declared[0], int) and declared[0] > 0 else None

    @property
    def classes(self):
        return list(self.info.classes)

    def preprocess(self, images):
        """float32 (N, C, H, W) in [0, 1], the file's input, for paths, PIL images or uint8 arrays."""
        return imaging.batch(images, self.info.input_size, self.info.rule)

    def logits(self, images):
        """(N, classes) float32 logits; `images` as for `preprocess`, or an already prepared float32
        batch (N, C, H, W) in [0, 1]. A file whose graph fixes its batch size runs that many at a time."""
        if isinstance(images, np.ndarray) and images.dtype == np.float32 and images.ndim == 4:
            batch = self._checked(images)
        else:
            batch = self.preprocess(images)
        step = self.fixed_batch or len(batch)
        return np.concatenate([self._run(batch[i:i + step], step) for i in range(0, len(batch), step)])

    def _checked(self, batch):
        if not len(batch):
            raise UsageError("no images given (the prepared batch is empty)")
        if list(batch.shape[1:]) != list(self.info.input_size):
            raise UsageError(f"a prepared batch must be (N, {', '.join(map(str, self.info.input_size))}) float32 pixels "
                             f"in [0, 1] for this model, not {tuple(batch.shape)}")
        if batch.size and not (np.isfinite(batch).all() and batch.min() >= 0 and batch.max() <= 1):
            raise UsageError(f"a prepared batch holds pixels scaled to [0, 1] (uint8 / 255), the model normalises them "
                             f"itself; these range from {batch.min():g} to {batch.max():g}")
        return batch

    def _run(self, batch, size):
        """The session on `batch`, padded with zeros to `size` images (a fixed-batch graph) and cut back."""
        count = len(batch)
        if count < size:
            batch = np.concatenate([batch, np.zeros((size - count, *batch.shape[1:]), batch.dtype)])
        try:
            out = self.session.run(None, {self.input_name: np.ascontiguousarray(batch)})[0]
        except Exception as error:  # onnxruntime raises its own InvalidArgument/Fail types
            from engine.errors import first_line

            raise EngineError(f"onnxruntime could not run {self.path} on {count} image{'s' if count != 1 else ''} "
                              f"({first_line(error, 240)})") from None
        classes = len(self.info.classes)  # a graph whose output size is not fixed is checked on what it gives
        if out.ndim != 2 or out.shape != (len(batch), classes):
            raise EngineError(f"{self.path} gave outputs of shape {list(out.shape)} for {len(batch)} image"
                              f"{'s' if len(batch) != 1 else ''}, not logits for its {classes} classes "
                              f"({', '.join(self.info.classes[:5])}{', ...' if classes > 5 else ''})"
                              + (": --classes must name one class for each of its outputs, in order" if self.flagged
                                 else ", as its metadata says"))
        return out[:count]

    def predict(self, images, topk=1):
        """For each image, its `topk` (class, probability) pairs, most likely first (topk above the
        class count gives every class). A file whose graph ends in a softmax gives probabilities, taken as
        they are (export.outputs)."""
        topk = check_whole("topk", topk)
        probabilities = outputs.probabilities(self.logits(images), self.output)
        broken = np.flatnonzero(~np.isfinite(probabilities).all(axis=1))  # an argmax over NaN is no prediction
        if len(broken):
            raise EngineError(f"{self.path} gave NaN or infinite outputs for {_image_name(images, broken[0])}"
                              f"{f' and {len(broken) - 1} more' if len(broken) > 1 else ''}: no probabilities to show")
        k = min(topk, len(self.info.classes))
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        return [[(self.info.classes[i], float(row[i])) for i in top] for row, top in zip(probabilities, order)]


DEVICES = ("auto", "cpu", "cuda")


def _image_name(images, i):
    """How a message names image `i` of what predict was given: a file by its path, else by its place."""
    if isinstance(images, (list, tuple)) and isinstance(images[i], (str, os.PathLike)):
        return printable(os.fspath(images[i]))
    return f"image {i + 1} of {len(images)}"


def check_whole(name, value):
    """A whole number of at least 1 (numpy's integers too), as an int; one UsageError otherwise."""
    if not _whole(value) or value < 1:
        raise UsageError(f"{name} must be a whole number of at least 1, not {value!r}")
    return int(value)


def _whole(value):
    import numbers

    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


STDIN = "-"  # an IMAGE argument naming standard input, as cat and tar take it (./- is a file named -)


def predict_files(model: Classifier, paths, topk=3, batch_size=64, as_json=False, say=print, warn=None, stdin=None):
    """`engine predict`: every image under `paths`, in batches; one line (or JSON object) per image.
    A file that cannot be read (missing, empty, not an image, truncated, too large) is one line each
    through `warn` (by default an EngineError for the first), and the others are still predicted.
    `-` among `paths` is one image read from `stdin` (a binary file; sys.stdin.buffer by default),
    shown as `-`. Returns the number of files that could not be."""
    topk, batch_size = check_whole("topk", topk), check_whole("batch_size", batch_size)
    given = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if sum(str(p) == STDIN for p in given) > 1:
        raise UsageError("- (standard input) can be given once: it holds one image")
    files, bad = [], []  # (name shown, path or the bytes read from standard input)
    for argument in given:
        if str(argument) == STDIN:
            try:
                files.append((STDIN, _read_stdin(stdin, model.info.input_size[1:])))
            except EngineError as error:
                bad.append(str(error))
            continue
        try:
            found = imaging.expand([argument], note=lambda line: print(one_line(line), file=sys.stderr))  # stdout: results
        except EngineError as error:  # a folder with no image: named, and the other arguments still predicted
            bad.append(str(error))
            continue
        for path in found:  # every header first: nothing is decoded from a file that cannot be
            try:
                imaging.open_image(path, model.info.input_size[1:]).close()
                files.append((path, path))
            except EngineError as error:
                bad.append(str(error))
    if bad and warn is None:
        raise EngineError(bad[0])
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        try:
            results = list(zip(chunk, model.predict([source for _, source in chunk], topk=topk)))
        except EngineError:  # a file whose pixels do not decode (its header did): the chunk one by one
            if warn is None:
                raise
            results = []
            for name, source in chunk:
                try:
                    results.append(((name, source), model.predict([source], topk=topk)[0]))
                except EngineError as error:
                    bad.append(f"standard input: {error}" if name == STDIN else str(error))
        for (name, _), top in results:
            if as_json:
                say(json.dumps({"image": str(name), "top": [{"class": c, "probability": round(p, 6)} for c, p in top]}))
            else:
                say(f"{printable(name)}: " + ", ".join(f"{printable(c)} {p * 100:.1f}%" for c, p in top))
    for line in bad:
        warn(line)
    return len(bad)


def _read_stdin(stdin, size):
    """The encoded image on standard input, its header checked as a file's is (engine.pixels.check_size)."""
    import sys

    from engine.pixels import check_size

    if stdin is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("- reads an image from standard input, and none is piped in (engine predict MODEL.onnx - < "
                             "photo.jpg)")
        stdin = sys.stdin.buffer
    data = stdin.read()
    try:
        image = imaging.open_bytes(data)
    except EngineError as error:
        raise EngineError(f"standard input: {error}") from None
    with image:
        check_size(image, "the image on standard input", size)
    return data
