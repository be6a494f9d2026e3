"""The one config: every training choice, from the command line to the checkpoint to the exporter.

`Config` is a dataclass whose fields carry their own help text, so the CLI generates its flags
from it (no default is written twice), `train()` reads it, and checkpoints store it as a plain
dict that `Config.from_dict` turns back into the same object.
"""

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import EngineError, UsageError

BUILTIN_DATASETS = ("synthetic", "cifar10", "mnist", "fashion_mnist")


def option(default, help, *, choices=None, group="train", resume=False, const=None):
    """A config field with the metadata its command-line flag is generated from.

    group: "train" (train only), "data" and "runtime" (train and eval).
    resume: the flag may differ from the saved config when resuming (it changes nothing the
    weights depend on).
    const: the value of the flag given alone (its value is then optional, and --no-FLAG gives the default).
    """
    return field(default=default, metadata={"help": help, "choices": choices, "group": group, "resume": resume,
                                            "const": const})


@dataclass
class Config:
    model: str = option(
        "cifar_cnn", "network: a built-in name (cifar_cnn, cifar_seq, mnist_cnn, lenet, mlp, fast_cifar, fast_cifar94), "
        "torchvision:NAME (e.g. torchvision:resnet18), FILE.py:NAME or package.module:NAME (an nn.Module class or a "
        "function returning one; see docs/models.md)"
    )
    model_args: str | None = option(
        None, "JSON object of keyword arguments for the model's constructor, e.g. '{\"width\": 64}' (num_classes, "
        "in_channels and in_shape are passed by name to a constructor that takes them)"
    )
    init_from: str | None = option(
        None, "start from the weights in PATH: an engine checkpoint or a plain state dict (.pt/.pth, loaded "
        "weights-only); a classifier head of another class count is re-initialised"
    )
    freeze: str | None = option(
        None, "PREFIX[,PREFIX]: keep the parameters under these names fixed (e.g. conv1,layer1)"
    )
    data: str = option(
        "synthetic",
        "synthetic (built in), cifar10, mnist, fashion_mnist, or the PATH of an image folder "
        "(train/<class>/*, test/<class>/*) or of a .tar, .tar.gz or .zip archive of one",
        group="data",
    )
    image_size: str | None = option(
        None, "S or HxW: resize every image of an image folder once, when it is decoded, by --resize (needed for "
        "folders of mixed sizes; default: the images' own size)",
        group="data",
    )
    resize: str = option(
        "stretch", "how an image becomes --image-size: stretch (the whole image, its aspect ratio changed, as Keras "
        "does; 2.5 points better than crop on a mixed-size CIFAR-10 copy) or crop (shorter side to the size, then "
        "the centre: torchvision's convention, which keeps the aspect ratio)",
        choices=("stretch", "crop"), group="data",
    )
    test_split: str | None = option(
        None, "for an image folder without test/ (or val/, valid/, validation/): hold out a seeded, stratified P%% "
        "of each class as the test set; kept in the run, so engine eval uses the same images (default: 10%%). engine "
        "eval of other --data: all, every image (its default)",
        group="data",
    )
    data_dir: str = option("./data", "where cifar10/mnist/fashion_mnist live in torchvision's layout", group="data", resume=True)
    cache_dir: str | None = option(
        None, "where decoded image folders are cached (default: $ENGINE_CACHE_DIR or ~/.cache/engine)", group="data", resume=True
    )
    limit_train: int | None = option(None, "train on a seeded random subset of N images (default: all)")
    limit_test: int | None = option(None, "evaluate on a seeded random subset of N images (default: all)", group="data")
    epochs: int = option(10, "passes over the training set")
    batch_size: int = option(64, "images per step (64 was fastest per image on the 2-core CPU)", group="runtime")
    eval_batch_size: int | None = option(
        None, "images per evaluation batch (default: --batch-size; 250 and 512 measured no faster end to end on the "
        "2-core Xeon, see docs/time-to-accuracy.md)",
        group="runtime", resume=True,
    )
    lr: float = option(0.05, "peak learning rate")
    optimizer: str = option(
        "sgd",
        "sgd (Nesterov momentum), adamw, adam, rmsprop, or muon (Muon for the conv filters at --muon-lr, sgd for "
        "the rest; docs/training.md); --momentum is beta1 for adam(w) and the momentum of sgd and rmsprop; the "
        "adaptive ones want a far smaller --lr (about 1e-3)",
        choices=("sgd", "adamw", "adam", "rmsprop", "muon"),
    )
    muon_lr: float = option(
        0.24, "--optimizer muon: the conv filters' peak learning rate, a step's size relative to each filter (the "
        "schedule moves it with --lr; airbench94_muon's 0.24)")
    muon_momentum: float = option(0.6, "--optimizer muon: the conv filters' Nesterov momentum (airbench94_muon's 0.6)")
    momentum: float = option(0.9, "SGD momentum; beta1 for adam and adamw; the momentum of rmsprop")
    weight_decay: float = option(5e-4, "L2 penalty (decoupled for adamw)")
    bn_lr_scale: float = option(
        1.0, "learning-rate multiplier for BatchNorm parameters (under --optimizer muon every bias too), whose weight "
        "decay is divided by it (airbench: 64)"
    )
    crop_padding: int = option(4, "random crops: pixels of padding each side (0: no crops)")
    crop_padding_mode: str = option(
        "zeros", "what fills the --crop-padding border: zeros, or reflect (the image mirrored at its edges, without "
        "repeating the edge pixel, as airbench pads)", choices=("zeros", "reflect"),
    )
    flip: str = option(
        "random", "training flips, for datasets that train with them: random (each image mirrored with probability "
        "1/2 in each epoch) or alternate (airbench: a seeded half in epoch 0, then each image's side swaps every epoch)",
        choices=("random", "alternate"),
    )
    resized_crop: float | None = option(
        None, "random-resized crops instead of padded ones: each training image cropped to a box of MIN to all of "
        "its area (aspect 3:4 to 4:3) and resized back, batched on the device (e.g. 0.35; default: off, see "
        "docs/images.md#augmentation for the measurement)"
    )
    label_smoothing: float = option(0.1, "cross-entropy label smoothing")
    class_weights: str = option(
        "none", "weight the cross-entropy per class: auto is inverse class frequency of the training images, "
        "N / (classes x images of the class), so the mean weight over them is 1 (for imbalanced data; see "
        "docs/training.md)", choices=("none", "auto")
    )
    schedule: str = option(
        "onecycle", "learning-rate schedule: onecycle (up from lr/10 over 20%% of the steps, then down to 0), cosine, "
        "linear (straight down to 0) or constant", choices=("onecycle", "cosine", "linear", "constant"))
    ema: float | None = option(
        None, "evaluate, keep as best.pt and export an exponential moving average of the weights, updated after "
        "every step with decay DECAY, 0 < DECAY < 1 (--ema alone: 0.99), warmed up over the first steps; --no-ema "
        "turns off a recipe's (BatchNorm statistics averaged alike; see docs/training.md) (default: off, fast_cifar's "
        "recipe 0.99)", const=0.99,
    )
    lookahead: bool = option(
        False, "airbench94's lookahead: every 5 steps the weights (BatchNorm statistics too) move to a slow copy "
        "of them, averaged with a decay that grows over the run, and at its last step become that copy (see "
        "docs/training.md) (default: off)"
    )
    target_acc: float | None = option(
        None, "stop at the first evaluation whose test accuracy is at least X percent, and report the wall time "
        "to it from the command's start; an evaluation within an epoch stops reading the test set early where the "
        "images read show it far below X (docs/time-to-accuracy.md) (default: train all --epochs)"
    )
    eval_every: float | None = option(
        None, "also evaluate every X of an epoch, 0 < X <= 1, or only every X epochs, X a whole number (the last "
        "epoch always evaluates; a fixed budget timed to its end evaluates once) (default: 1, i.e. at epoch ends; "
        "with --target-acc 0.125 in the first epoch, then 0.25)"
    )
    val_split: str | None = option(
        None, "hold out a seeded N (or P%%) of the training images, stratified by class, as a validation set: best.pt "
        "is then chosen on it "
        "and the test set is only reported (default: none, best.pt is chosen on the test set)"
    )
    tta: int = option(
        0, "test-time augmentation level, for datasets that train with flips: 0 none, 1 (also --tta alone) the mean "
        "logits of each image and its mirror, 2 also its 1-pixel translations, airbench94's weighting (6 forward "
        "passes; see docs/time-to-accuracy.md)", choices=(0, 1, 2), group="runtime", const=1,
    )
    amp: bool | None = option(
        None, "mixed precision where the hardware gains from it: bf16/fp16 autocast on CUDA and on CPUs with "
        "AVX512-BF16 or AMX; elsewhere it keeps fp32 and says so (--amp-dtype bf16 forces it) (default: on where it gains)",
        group="runtime",
    )
    amp_dtype: str = option("auto", "autocast dtype: auto is bf16 where supported, else fp16 on CUDA", choices=("auto", "fp16", "bf16"), group="runtime")
    compile: bool = option(False, "torch.compile the model in place (warm-up reported apart); engine eval on CPU compiles ahead of time (AOTInductor)", group="runtime")
    compile_mode: str = option(
        "default",
        "torch.compile mode",
        choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
        group="runtime",
    )
    channels_last: bool = option(True, "channels_last memory format (about 2x faster on CPU)", group="runtime")
    triton: bool = option(False, "run conv->ReLU->pool blocks through the fused Triton kernel (interpreter on CPU)", group="runtime")
    device: str = option("auto", "auto picks cuda when available", choices=("auto", "cpu", "cuda"), group="runtime", resume=True)
    seed: int = option(0, "seed for data, initialisation and augmentation")
    out: str | None = option(None, "run directory (default: runs/<model>-<data>-<timestamp>; runs/latest links the run last started or resumed)")
    tensorboard: bool = option(False, "also write TensorBoard events to the run directory", resume=True)
    save_every: str = option(
        "10m",
        "also write last.pt within an epoch every DURATION (30s, 10m, 1h; 0s: after every step; off: only at epoch "
        "ends), so a kill "
        "loses at most that much; epochs shorter than DURATION never save mid-way (default: 10m)",
        resume=True,
    )
    quiet: bool = option(False, "print only the per-epoch lines and errors", group="runtime", resume=True)

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Raise UsageError, naming the flag, for values no run could use."""
        from engine import config_types

        if isinstance(self.tta, bool):  # runs before the levels kept --tta as on/off: on is level 1
            self.tta = int(self.tta)
        config_types.normalise(self)
        config_types.check(self, flag)
        config_types.check_ranges(self, flag)
        config_types.parse_duration(self.save_every)
        self.check_data_options()
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise UsageError(f"{flag(f.name)} must be one of {', '.join(map(str, choices))}, not {getattr(self, f.name)!r}")
        from engine.models.reference import parse_model  # torch is needed by then anyway

        parse_model(self.model, self.model_args)  # the syntax, the file, the name; no user code runs here
        if self.freeze is not None and not [p for p in self.freeze.split(",") if p.strip()]:
            raise UsageError(f"--freeze takes parameter name prefixes such as conv1,layer1, not {self.freeze!r}")
        if self.data not in BUILTIN_DATASETS and not looks_like_path(self.data):
            raise UsageError(
                f"unknown dataset {self.data!r} (nor a folder of that name here); use one of "
                f"{', '.join(BUILTIN_DATASETS)} or the path of an image folder or archive"
            )

    def check_data_options(self):
        """--image-size, --test-split and --val-split, as one line each (the same parsers the data reader uses)."""
        from engine.data.layout import parse_count, parse_fraction
        from engine.pixels import parse_image_size

        if self.val_split is not None:
            parse_count(self.val_split, 100, "--val-split")
        if self.test_split is not None:
            parse_fraction(self.test_split, "--test-split", whole=True)
        if self.image_size is not None:
            try:
                parse_image_size(self.image_size)
            except EngineError as error:
                raise UsageError(str(error)) from None

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise UsageError(f"config has unknown fields: {', '.join(sorted(unknown))}")
        return cls(**values)

    def with_absolute_paths(self):
        """The same config with data paths made absolute, so a saved run works from any directory."""
        data = self.data if self.data in BUILTIN_DATASETS else os.path.abspath(os.path.expanduser(self.data))
        cache = os.path.abspath(os.path.expanduser(self.cache_dir)) if self.cache_dir else None
        init = os.path.abspath(os.path.expanduser(self.init_from)) if self.init_from else None
        out = os.path.expanduser(self.out) if self.out else self.out  # --out=~/runs/a: no folder named ~
        return dataclasses.replace(self, data=data, data_dir=os.path.abspath(os.path.expanduser(self.data_dir)),
                                   cache_dir=cache, init_from=init, model=absolute_model(self.model), out=out)

    def resolved_cache_dir(self) -> Path:
        """The cache folder (made when first written); a file in its place is one line."""
        given = "--cache-dir" if self.cache_dir else "ENGINE_CACHE_DIR" if os.environ.get("ENGINE_CACHE_DIR") else None
        path = Path(self.cache_dir or os.environ.get("ENGINE_CACHE_DIR") or Path.home() / ".cache" / "engine")
        path = path.expanduser()
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise UsageError(f"{given or 'the cache folder'} {path}: {existing} is a file, not a folder; name a folder")
        return path


def absolute_model(model):
    """`nets.py:Net` -> `/abs/path/nets.py:Net`; every other form unchanged."""
    head, sep, name = model.strip().rpartition(":")  # as parse_model reads it: no stray space in the run
    if sep and head.endswith(".py"):
        return f"{os.path.abspath(os.path.expanduser(head))}:{name}"
    return model.strip()


def flag(name):
    return "--" + name.replace("_", "-")


def looks_like_path(data):
    """A --data value meant as a path: it has a separator, a dot or exists on disk."""
    return os.sep in data or "/" in data or "." in data or os.path.exists(data)


def fields_in(*groups):
    return [f for f in dataclasses.fields(Config) if f.metadata["group"] in groups]
