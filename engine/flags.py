"""The `engine` command's flags: one per Config field (so each default and help text is written
once, in engine/config.py), the subcommands' own arguments, and argparse's usage errors as one line.
engine.cli parses with them and runs the command.
"""

import argparse
import dataclasses
import typing

from engine.config import Config, fields_in, flag
from engine.errors import UsageError

LATEST = "runs/latest"


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage dump becomes one line, naming the subcommand if any
        where = f"{self.prog}: " if " " in self.prog else ""  # "engine: error: " is printed before it
        raise UsageError(f"{where}{message} (see {self.prog} --help)")


def _scalar_type(annotation):
    """int for `int | None`, and so on."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


EVAL_HELP = {  # engine eval's own words where a training run's would mislead
    "data": "evaluate on this data instead: synthetic, cifar10, mnist, fashion_mnist, or the PATH of an image folder "
            "or archive (default: the checkpoint's own test set)",
    "batch_size": "images per evaluation batch where --eval-batch-size is not given (default: 64)",
    "eval_batch_size": "images per evaluation batch; given, it wins over --batch-size (default: --batch-size)",
    "quiet": "print only the result (its line and the per-class table) and errors (default: off)",
}


def add_config_flags(parser, groups, helps=None):
    """One flag per Config field in `groups`; absent flags stay absent (default SUPPRESS). `helps`: a
    command's own help text for some of them."""
    for f in fields_in(*groups):
        kind = _scalar_type(f.type)
        help_text = (helps or {}).get(f.name) or f.metadata["help"]
        if "default" not in help_text:
            shown = "on" if f.default is True else "off" if f.default is False else "none" if f.default is None else f.default
            help_text += f" (default: {shown})"
        kwargs = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        optional = {} if f.metadata.get("const") is None else dict(nargs="?", const=f.metadata["const"])
        if kind is bool:
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, **kwargs)
        elif f.metadata["choices"]:
            parser.add_argument(flag(f.name), choices=f.metadata["choices"], type=kind, **optional, **kwargs)
        else:
            metavar = {int: "N", float: "X"}.get(kind, "PATH" if f.name in ("data_dir", "cache_dir", "out", "init_from") else
                                                 {"save_every": "DURATION", "model_args": "JSON", "freeze": "PREFIXES",
                                                  "model": "MODEL"}.get(f.name))
            parser.add_argument(flag(f.name), type=kind, metavar=metavar or f.name.upper(), **optional, **kwargs)
        if optional:  # --tta alone is level 1 and --no-tta level 0; --ema alone is 0.99 and --no-ema off
            parser.add_argument("--no-" + flag(f.name)[2:], dest=f.name, action="store_const", const=f.default,
                                default=argparse.SUPPRESS, help=f"{flag(f.name)} {'off' if f.default is None else f.default}")


def build_parser(handlers=None):
    """The `engine` command's parser; `handlers`: {command: function(args) -> exit code}, set as each
    subcommand's `func` (engine.cli's; None: parsing only)."""
    handlers = handlers or {}
    from engine import __version__

    parser = Parser(prog="engine", description="Train and evaluate small image CNNs fast, on CPU or CUDA.")
    parser.add_argument("--version", action="version", version=f"engine {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model and write a run directory",
                                description="Train a model. Every epoch prints the tutorial's line and writes "
                                            "last.pt, best.pt, metrics.jsonl and curves.png to the run directory; the run ends with "
                                            "confusion.png and confusion.json.")
    add_config_flags(train, ("train", "data", "runtime"))
    train.add_argument("--resume", nargs="?", const=LATEST, metavar="RUN_DIR",
                       help=f"continue a run from its last completed epoch (default RUN_DIR: {LATEST})")
    train.add_argument("--nproc", type=positive, metavar="N",
                       help="train with N processes on this machine (DDP): runs torchrun with the other arguments; "
                            "--batch-size is per process (default: one process, no torchrun)")
    train.set_defaults(command=_command_of(train), func=handlers.get("train"))

    evaluate = commands.add_parser("eval", help="test accuracy and loss of a checkpoint or an exported .onnx file",
                                   description="Evaluate a checkpoint (in PyTorch) or an exported .onnx file (in "
                                               "onnxruntime) on its own dataset's test split, or on --data.")
    evaluate.add_argument("checkpoint", metavar="CHECKPOINT|MODEL.onnx", help="a .pt file written by engine train, "
                          "or a .onnx file written by engine export")
    add_code_flag(evaluate)
    add_config_flags(evaluate, ("data", "runtime"), EVAL_HELP)
    add_metadata_flags(evaluate)
    evaluate.add_argument("--confusion", metavar="PATH.png", help="also write the confusion matrix as a picture "
                          "(colours: each true class's shares; counts in the cells up to 20 classes)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object (accuracy, loss, the whole "
                          "confusion matrix, per-class accuracy and precision) instead of text")
    evaluate.set_defaults(command=_command_of(evaluate), func=handlers.get("eval"))

    export = commands.add_parser("export", help="write a trained model as one verified ONNX file",
                                 description="Export a checkpoint to ONNX for onnxruntime: one self-contained file with "
                                             "the normalisation inside and the classes in its metadata, checked against "
                                             "PyTorch on the run's test images before it is written.")
    export.add_argument("out", metavar="OUT.onnx", help="the file to write")
    export.add_argument("--checkpoint", metavar="PATH", help="checkpoint to export (default: runs/latest/best.pt)")
    add_code_flag(export)
    export.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default: the exporter's, 18 or newer)")
    export.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                        help="check the file and compare onnxruntime with PyTorch before writing it (default: on)")
    export.add_argument("--int8", action="store_true",
                        help="also write OUT.int8.onnx (static QDQ int8, calibrated on training images) and compare it")
    export.set_defaults(command=_command_of(export), func=handlers.get("export"))

    predict = commands.add_parser("predict", help="classify images with an exported .onnx file",
                                  description="Top classes of each image (files or folders of them) through onnxruntime; "
                                              "preprocessing comes from the file's metadata.")
    predict.add_argument("model", metavar="MODEL.onnx", help="a file written by engine export")
    predict.add_argument("images", metavar="IMAGE", nargs="+", help="image files, folders meaning every image in them, or - for one image on standard input")
    predict.add_argument("--topk", type=positive, default=3, metavar="K", help="classes shown per image (default: 3)")
    predict.add_argument("--json", action="store_true", help="one JSON object per image instead of text")
    predict.add_argument("--batch-size", type=positive, default=64, metavar="N", help="images per run (default: 64)")
    predict.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                         help="onnxruntime's CUDA provider when it really loads, else CPU (default: auto)")
    add_metadata_flags(predict)
    predict.set_defaults(command=_command_of(predict), func=handlers.get("predict"))

    summary = commands.add_parser("summary", help="layer table of a model with output shapes, parameters and FLOPs",
                                  description="Print a model's layers, output shapes, parameter counts and "
                                              "forward MFLOPs: a network named by --model, or a trained checkpoint's.")
    summary.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT", help="a .pt file written by engine train: "
                         "its model, on its images and classes (--model then names a user model's code again)")
    summary.add_argument("--model", help="network: a built-in name, torchvision:NAME, FILE.py:NAME "
                         "or package.module:NAME (default: cifar_cnn)")
    summary.add_argument("--model-args", metavar="JSON", help="keyword arguments for the model's constructor")
    summary.add_argument("--input-shape", metavar="CxHxW", help="input shape, e.g. 1x28x28 (default: a built-in's "
                         "own, else 3x32x32, or as --model-args' in_channels or in_shape set it)")
    summary.add_argument("--num-classes", type=class_count, metavar="N", help="output classes, at least 2 (default: 10, or "
                         "--model-args' num_classes)")
    summary.set_defaults(command=_command_of(summary), func=handlers.get("summary"))
    return parser


def positive(text):
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def class_count(text):
    """argparse type: a number of classes, by the library's one rule (engine.models.spec.check_classes)."""
    from engine.models.spec import check_classes

    try:
        value = int(text)
    except ValueError:
        value = text
    try:
        return check_classes(value)
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_code_flag(parser):
    parser.add_argument("--model", dest="code", metavar="FILE.py:NAME", help="a checkpoint of a user model: its code, named again "
                        "(FILE.py:NAME or package.module:NAME); checkpoints never import code by themselves")


def add_metadata_flags(parser):
    parser.add_argument("--input-size", metavar="CxHxW", help="for an ONNX file without engine metadata: its input size")
    parser.add_argument("--classes", metavar="A,B,...", help="for an ONNX file without engine metadata: its class names")


def given(args):
    """The Config fields the user actually passed."""
    names = {f.name for f in dataclasses.fields(Config)}
    return {k: v for k, v in vars(args).items() if k in names}


def bare_optional_values(argv):
    """argv with each flag whose value is optional (--tta, --ema) given alone written as FLAG=CONST
    when the next word is not a number: argparse would take `engine eval --tta run/best.pt`'s
    checkpoint as the level and fail on it (a number that is not a level is still refused by argparse).
    `engine train` takes no positional argument, so its argv is argparse's as given: `--ema high`
    is then argparse's one line, "invalid float value: 'high'"."""
    if argv[:1] == ["train"]:
        return list(argv)
    flags = [flag(f.name) for f in dataclasses.fields(Config)]
    optional = {flag(f.name): f.metadata for f in dataclasses.fields(Config) if f.metadata.get("const") is not None}
    out = []
    for i, word in enumerate(argv):
        named = [name for name in flags if name.startswith(word)] if word.startswith("--") and len(word) > 3 else []
        name = word if word in optional else named[0] if len(named) == 1 else None  # argparse takes --tt as --tta
        following = argv[i + 1] if i + 1 < len(argv) else None
        if name in optional and following is not None and not _number(following):
            word = f"{name}={optional[name]['const']}"
        out.append(word)
    return out


def check_dashed_paths(argv):
    """A word before `--` that starts with one - and names an existing file or folder (`-cat.png`) is
    one UsageError saying how to give it: argparse reads it as an option, and would say an IMAGE or
    CHECKPOINT given is missing, or that -cat.png is unknown. `-` (standard input) and -h are left."""
    import os

    for word in argv:
        if word == "--":
            return
        if word.startswith("-") and not word.startswith("--") and word not in ("-", "-h") and os.path.lexists(word):
            raise UsageError(f"{word} is read as an option: a file whose name starts with - is given as ./{word}, "
                             f"or after -- (... -- {word})")


def _number(word):
    try:
        float(word)
    except ValueError:
        return False
    return True


def _command_of(parser):
    """A subcommand's parser, kept in its arguments: an unknown flag is said against its own --help."""
    return lambda: parser
