"""What an exported file says about itself: the `metadata_props` contract between exporter and clients.

Every value is a string (JSON where structured), so any ONNX runtime's metadata API reads it.
`ModelInfo` is the parsed form: the exporter builds it from a checkpoint, `predict` and `eval`
read it back from a file, and a file without it needs `--input-size` and `--classes` instead.
"""

import json
from dataclasses import dataclass, field

from engine.config_types import parse_shape
from engine.pixels import RESIZE_RULES, parse_image_size
from engine.errors import EngineError, UsageError

# engine.models.spec.MIN_CLASSES, the classifier's rule; not imported from there, which loads torch (predict runs
# on onnxruntime alone)
MIN_CLASSES = 2
INPUT_RANGE = "0-1"  # float32 pixels scaled to [0, 1]; normalisation is inside the graph
# How an image of another size becomes input_size: engine.pixels.fit with the rule training decoded its
# images with (--resize: stretch, or the shorter side scaled to cover H x W and the centre cropped).
# Files written before the rule was recorded were served stretched: that is the default.
RESIZE = RESIZE_RULES["stretch"]
REQUIRED = ("classes", "input_size")


def utf8(text):
    """`text` as a string ONNX can hold (protobuf strings are UTF-8): a path's bytes that are not UTF-8
    (Python's surrogate escapes, b'\\xff' read as '\\udcff') written as the backslash escape the CLI prints."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class ModelInfo:
    classes: list  # class names, in logit order
    input_size: list  # [C, H, W]
    input_range: str = INPUT_RANGE
    resize: str = RESIZE
    image_size: list | None = None  # [H, W] training resized every image to (--image-size), else None (their own size)
    mean: list = field(default_factory=list)  # informational: already applied inside the graph
    std: list = field(default_factory=list)
    model: str = ""
    dataset: str = ""
    test_accuracy: float | None = None
    test_accuracy_tta: int = 0  # the --tta level that accuracy was measured with (this file runs one view)
    test_accuracy_precision: str = "fp32"  # the precision that accuracy was measured in (this file runs fp32); not stored
    engine_version: str = ""
    opset: int | None = None
    config: dict = field(default_factory=dict)  # the training config, for `engine eval MODEL.onnx`
    fingerprint: dict | None = None  # the run's data fingerprint (engine.resume): its own test set changed is said

    @property
    def channels(self):
        return self.input_size[0]

    @classmethod
    def from_checkpoint(cls, checkpoint, opset):
        from engine import __version__

        spec, cfg = checkpoint.spec, checkpoint.config

        done = checkpoint.epochs_done  # 2, or 1.25 for a checkpoint saved within an epoch
        measured = next((m for m in reversed(checkpoint.metrics or [])
                         if abs(m.get("epoch", -1) - done) < 0.005 and "test_acc" in m), {})
        accuracy, tta = measured.get("test_acc"), int(measured.get("tta") or 0)
        return cls(classes=list(spec.classes), input_size=list(spec.shape), mean=list(spec.mean),
                   std=list(spec.std), model=checkpoint.ref.label, dataset=cfg["data"], test_accuracy=accuracy,
                   test_accuracy_tta=tta, test_accuracy_precision=(checkpoint.runtime or {}).get("precision") or "fp32",
                   engine_version=__version__, opset=opset, config=dict(cfg),
                   image_size=list(parse_image_size(cfg["image_size"])) if cfg.get("image_size") else None,
                   fingerprint=checkpoint.fingerprint,
                   resize=RESIZE_RULES[cfg.get("resize") or "stretch"])

    def to_props(self):
        """{key: string} for ModelProto.metadata_props."""
        return {
            "classes": json.dumps(self.classes),
            "input_size": json.dumps(self.input_size),
            "input_range": self.input_range,
            "resize": self.resize,
            "image_size": json.dumps(self.image_size),
            "mean": json.dumps(self.mean),
            "std": json.dumps(self.std),
            "model": utf8(self.model),
            "dataset": utf8(self.dataset),
            "test_accuracy": "" if self.test_accuracy is None else f"{self.test_accuracy:.5f}",
            "test_accuracy_tta": str(self.test_accuracy_tta),
            "engine_version": self.engine_version,
            "opset": "" if self.opset is None else str(self.opset),
            "training_config": json.dumps(self.config),
            "data_fingerprint": "" if self.fingerprint is None else json.dumps(self.fingerprint),
        }

    @classmethod
    def from_props(cls, props, source="the model"):
        """Parse metadata_props; EngineError naming the key when the engine's metadata is absent or bad."""
        missing = [key for key in REQUIRED if key not in props]
        if missing:
            raise EngineError(f"{source} has no engine metadata ({', '.join(missing)}); "
                              "pass --input-size CxHxW and --classes NAME,NAME,... to use it")
        try:
            classes = json.loads(props["classes"])
            size = json.loads(props["input_size"])
            accuracy = props.get("test_accuracy") or None
            info = cls(classes=classes, input_size=size, input_range=props.get("input_range", INPUT_RANGE),
                       resize=props.get("resize", RESIZE), image_size=json.loads(props.get("image_size") or "null"),
                       mean=json.loads(props.get("mean") or "[]"), std=json.loads(props.get("std") or "[]"),
                       model=props.get("model", ""), dataset=props.get("dataset", ""),
                       test_accuracy=float(accuracy) if accuracy else None,
                       test_accuracy_tta=int(props.get("test_accuracy_tta") or 0),
                       engine_version=props.get("engine_version", ""),
                       opset=int(props["opset"]) if props.get("opset") else None,
                       config=json.loads(props.get("training_config") or "{}"),
                       fingerprint=json.loads(props.get("data_fingerprint") or "null"))
        except (ValueError, TypeError) as error:
            raise EngineError(f"{source} has unreadable engine metadata ({error})") from None
        info.check(source)
        return info

    @classmethod
    def from_flags(cls, input_size, classes):
        """For a file without the engine's metadata: `--input-size 3x32x32 --classes a,b,c`."""
        if not input_size or not classes:
            raise UsageError("a model without engine metadata needs both --input-size CxHxW and --classes NAME,NAME,...")
        if isinstance(classes, (list, tuple)):  # from Python: a list of names, (C, H, W)
            classes = ",".join(map(str, classes))
        if isinstance(input_size, (list, tuple)):
            input_size = "x".join(map(str, input_size))
        info = cls(classes=[c.strip() for c in str(classes).split(",")], input_size=parse_shape(input_size, "--input-size"))
        info.check("--classes/--input-size")
        return info

    def check(self, source):
        ok_classes = (isinstance(self.classes, list) and len(self.classes) >= MIN_CLASSES
                      and all(isinstance(c, str) and c for c in self.classes))
        if not ok_classes:
            raise EngineError(f"{source}: classes must be a list of at least {MIN_CLASSES} names, not {self.classes!r}")
        twice = sorted({c for c in self.classes if self.classes.count(c) > 1})
        if twice:
            raise EngineError(f"{source}: classes name {', '.join(twice)} more than once; each class needs its own name")
        ok_size = (isinstance(self.input_size, list) and len(self.input_size) == 3
                   and all(isinstance(v, int) and v > 0 for v in self.input_size) and self.input_size[0] in (1, 3))
        if not ok_size:
            raise EngineError(f"{source}: input_size must be [C, H, W] with C 1 or 3, not {self.input_size!r}")
        if self.input_range != INPUT_RANGE:
            raise EngineError(f"{source}: input_range {self.input_range!r} is not supported (expected {INPUT_RANGE!r})")
        if self.resize not in RESIZE_RULES.values():
            raise EngineError(f"{source}: resize rule {self.resize!r} is not supported (one of "
                              f"{', '.join(RESIZE_RULES.values())})")
        if self.fingerprint is not None and not isinstance(self.fingerprint, dict):
            raise EngineError(f"{source}: data_fingerprint must be a JSON object, not {type(self.fingerprint).__name__}")
        if not isinstance(self.config, dict):
            raise EngineError(f"{source}: training_config must be a JSON object of the run's settings, not "
                              f"{type(self.config).__name__}")
        if self.image_size is not None and not (isinstance(self.image_size, list) and len(self.image_size) == 2
                                                and all(isinstance(v, int) and v > 0 for v in self.image_size)):
            raise EngineError(f"{source}: image_size must be [H, W] or null, not {self.image_size!r}")

    @property
    def rule(self):
        """The --resize name of the file's rule (crop or stretch), for engine.pixels.fit."""
        return next(name for name, long in RESIZE_RULES.items() if long == self.resize)
