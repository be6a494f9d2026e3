"""The `engine` command: parse, build the config, call the library, report errors in one line.

Flags are generated from `Config`'s fields, so each default and help text is written once.
`main(argv)` returns the exit code: 0, 1 for a failure of the environment or the files, 2 for
a usage error, 130 when interrupted. Errors never show a traceback.
"""

import argparse
import dataclasses
import json
import os
import sys
import typing

from engine.config import Config, fields_in, flag, parse_shape
from engine.errors import EngineError, Interrupted, UsageError, say_error
from engine.target import command_started  # noqa: F401  its import time is --target-acc's clock where /proc is missing

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
    "batch_size": "images per evaluation batch (default: 64)",
    "quiet": "print only the result (its line and the per-class table) and errors (default: off)",
}


def add_config_flags(parser, groups, helps=None):
    """One flag per Config field in `groups`; absent flags stay absent (default SUPPRESS). `helps`: a
    command's own help text for some of them."""
    for f in fields_in(*groups):
        kind = _scalar_type(f.type)
        help_text = (helps or {}).get(f.name) or f.metadata["help"]
        if "default" not in help_text:
            shown = "on" if f.default is True else "off" if f.default is False else f.default
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


def build_parser():
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
    train.set_defaults(command=_command_of(train), func=cmd_train)

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
    evaluate.set_defaults(command=_command_of(evaluate), func=cmd_eval)

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
    export.set_defaults(command=_command_of(export), func=cmd_export)

    predict = commands.add_parser("predict", help="classify images with an exported .onnx file",
                                  description="Top classes of each image (files or folders of them) through onnxruntime; "
                                              "preprocessing comes from the file's metadata.")
    predict.add_argument("model", metavar="MODEL.onnx", help="a file written by engine export")
    predict.add_argument("images", metavar="IMAGE", nargs="+", help="image files, or folders meaning every image in them")
    predict.add_argument("--topk", type=positive, default=3, metavar="K", help="classes shown per image (default: 3)")
    predict.add_argument("--json", action="store_true", help="one JSON object per image instead of text")
    predict.add_argument("--batch-size", type=positive, default=64, metavar="N", help="images per run (default: 64)")
    predict.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                         help="onnxruntime's CUDA provider when it really loads, else CPU (default: auto)")
    add_metadata_flags(predict)
    predict.set_defaults(command=_command_of(predict), func=cmd_predict)

    summary = commands.add_parser("summary", help="layer table of a model with output shapes, parameters and FLOPs",
                                  description="Print a model's layers, output shapes, parameter counts and "
                                              "forward MFLOPs.")
    summary.add_argument("--model", default="cifar_cnn", help="network: a built-in name, torchvision:NAME, FILE.py:NAME "
                         "or package.module:NAME (default: cifar_cnn)")
    summary.add_argument("--model-args", metavar="JSON", help="keyword arguments for the model's constructor")
    summary.add_argument("--input-shape", metavar="CxHxW", help="input shape, e.g. 1x28x28 (default: a built-in's "
                         "own, else 3x32x32)")
    summary.add_argument("--num-classes", type=positive, default=10, help="output classes (default: 10)")
    summary.set_defaults(command=_command_of(summary), func=cmd_summary)
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


def log(message):
    print(message, flush=True)


def cmd_train(args):
    from engine.train import train

    if args.nproc is not None:  # a launch option, not a training choice: never in Config or checkpoints
        from engine.distributed import launch

        return launch(args.nproc, args.argv)
    values = given(args)
    resume = None
    if args.resume is not None:
        from engine.resume import resume_config

        cfg, resume = resume_config(args.resume, values, say=log)
        train(cfg, resume=resume, log=log)
        return 0
    from engine.recipe import apply_recipe

    values = apply_recipe(values, say=(lambda *_: None) if values.get("quiet") else log)  # flags given win
    train(Config(**values), log=log)
    return 0


def cmd_eval(args):
    from engine.confusion import check_png_path
    from engine.evaluate import as_json, picture_title

    values = given(args)
    if args.confusion is not None:
        check_png_path(args.confusion)  # before any work
    if args.json:
        values["quiet"] = True  # stdout is the one JSON object
    if args.checkpoint.lower().endswith(".onnx"):
        from export.evaluate import evaluate_onnx

        if args.code:
            raise UsageError("--model names a checkpoint's code; an .onnx file holds its whole model")
        result = evaluate_onnx(args.checkpoint, values, input_size=args.input_size, classes=args.classes, log=log)
        source = f"ONNX model on {result['provider']}; {result['images'] / result['seconds']:,.0f} img/s"
    else:
        from engine.evaluate import evaluate_checkpoint

        if args.input_size or args.classes:
            raise UsageError("--input-size and --classes are for .onnx files; a checkpoint knows its own")
        result = evaluate_checkpoint(args.checkpoint, values, log=log, model=args.code)
        source = f"checkpoint after epoch {result['epoch']}; {result['images'] / result['seconds']:,.0f} img/s"
        if result["compile_seconds"] is not None:
            source += f", after compiling for {result['compile_seconds']:.1f} s"
    if args.confusion is not None:
        from engine.runtime import warn

        result["confusion"].save_png(args.confusion, picture_title(result), warn)
    if args.json:
        print(json.dumps({**as_json(result), "confusion_png": args.confusion}))
        return 0
    from engine.report import tta_mark

    tta = tta_mark(result.get("tta"))
    print(f"Test_acc{tta}:{result['test_acc'] * 100:.2f}%, Test_loss:{result['test_loss']:.4f} "
          f"({result['images']:,} test images of {result['data']}; {source})")
    print(result["confusion"].format())
    if args.confusion is not None:
        print(f"Wrote {args.confusion} (confusion matrix)")
    return 0


def cmd_export(args):
    from export.onnx_export import export_onnx

    result = export_onnx(args.out, args.checkpoint, opset=args.opset, verify=args.verify, int8=args.int8, log=log,
                         model=args.code)  # says its Verified and Wrote lines, then the int8 work
    if result.int8 is not None:
        log(f"Wrote {result.int8.path}: {result.int8.describe()}")
    return 0


def cmd_predict(args):
    from export.predict import Classifier, predict_files

    model = Classifier(args.model, input_size=args.input_size, classes=args.classes, device=args.device)
    bad = predict_files(model, args.images, topk=args.topk, batch_size=args.batch_size, as_json=args.json, say=log,
                        warn=say_error)
    return 1 if bad else 0  # each unreadable file was one line on stderr; the others were predicted


def cmd_summary(args):
    from engine.models import MODELS, format_summary
    from engine.models.build import build
    from engine.models.reference import parse_model

    ref = parse_model(args.model, args.model_args)
    shape = MODELS[ref.name].reference_shape if ref.kind == "builtin" else (3, 32, 32)
    if args.input_shape:
        shape = tuple(parse_shape(args.input_shape, "--input-shape"))
    print(format_summary(args.model, build(ref, shape, args.num_classes), shape))
    return 0


def bare_optional_values(argv):
    """argv with each flag whose value is optional (--tta, --ema) given alone written as FLAG=CONST
    when the next word is not a number: argparse would take `engine eval --tta run/best.pt`'s
    checkpoint as the level and fail on it (a number that is not a level is still refused by argparse).
    `engine train` takes no positional argument, so its argv is argparse's as given: `--ema high`
    is then argparse's one line, "invalid float value: 'high'"."""
    if argv[:1] == ["train"]:
        return list(argv)
    optional = {flag(f.name): f.metadata for f in dataclasses.fields(Config) if f.metadata.get("const") is not None}
    out = []
    for i, word in enumerate(argv):
        meta = optional.get(word)
        following = argv[i + 1] if i + 1 < len(argv) else None
        if meta is not None and following is not None and not _number(following):
            word = f"{word}={meta['const']}"
        out.append(word)
    return out


def _number(word):
    try:
        float(word)
    except ValueError:
        return False
    return True


def _command_of(parser):
    """A subcommand's parser, kept in its arguments: an unknown flag is said against its own --help."""
    return lambda: parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `docker stop`, a scheduler), taken as Ctrl-C is: the run up to its last
    checkpoint is kept and said, and the exit code is 143 (128 + SIGTERM), as a shell reports."""


_terminated = []  # set once SIGTERM arrived: the exit code is then 143


def terminated(number, frame):
    _terminated.append(number)
    raise Terminated


def main(argv=None):
    import signal
    import threading

    handled = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminated) if handled else None
    _terminated.clear()
    try:
        code = run_command(argv)
        return 143 if _terminated and code in (1, 130) else code
    finally:
        if handled:
            signal.signal(signal.SIGTERM, previous)


def run_command(argv):
    parser = build_parser()
    for stream in (sys.stdout, sys.stderr):  # a class name an ASCII terminal cannot show is escaped, not a traceback
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        args, unknown = parser.parse_known_args(bare_optional_values(argv))
        if unknown:
            (args.command() if hasattr(args, "command") else parser).error(f"unrecognized arguments: {' '.join(unknown)}")
        args.argv = argv  # --nproc runs the same command under torchrun
        return args.func(args)
    except Interrupted as error:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank is interrupted: rank 0 says so
            print(f"engine: {error}", file=sys.stderr)
        return error.exit_code
    except EngineError as error:
        if not isinstance(error, UsageError) or os.environ.get("RANK", "0") == "0":  # torchrun ranks share
            say_error(error)  # their arguments: rank 0 alone names a bad one
        return error.exit_code
    except KeyboardInterrupt:
        print("engine: interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, MemoryError) as error:  # out of memory anywhere (GPU or host): one line saying what to lower
        from engine.memory import out_of_memory_line

        line = out_of_memory_line(error)
        if line is None:
            raise  # anything else is a bug: its traceback
        say_error(line)
        return 1
    except BrokenPipeError:  # `engine eval ... | head`: the reader left; stop quietly, as other tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's own flush at exit would fail on the closed pipe again
        return 141  # 128 + SIGPIPE, what a shell reports for a tool a pipe stopped
    except OSError as error:  # a full disk, a vanished file: the environment, not a bug
        name = error.filename if error.filename is None or len(str(error.filename)) < 80 else f"{str(error.filename)[:60]}..."
        say_error(f"{name}: {error.strerror}" if error.strerror and name else error.strerror or error)
        return 1
    except SystemExit as exit:  # --help from main(argv)
        return exit.code if isinstance(exit.code, int) else 0
