"""The `engine` command: parse, build the config, call the library, report errors in one line.

Flags are generated from `Config`'s fields, so each default and help text is written once.
`main(argv)` returns the exit code: 0, 1 for a failure of the environment or the files, 2 for
a usage error, 130 when interrupted. Errors never show a traceback.
"""

import argparse
import dataclasses
import sys
import typing

from engine.config import Config, fields_in, flag
from engine.errors import EngineError, Interrupted, UsageError

LATEST = "runs/latest"


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage dump becomes one line
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _scalar_type(annotation):
    """int for `int | None`, and so on."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def add_config_flags(parser, groups):
    """One flag per Config field in `groups`; absent flags stay absent (default SUPPRESS)."""
    for f in fields_in(*groups):
        kind = _scalar_type(f.type)
        help_text = f.metadata["help"]
        if "default" not in help_text:
            shown = "on" if f.default is True else "off" if f.default is False else f.default
            help_text += f" (default: {shown})"
        kwargs = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        if kind is bool:
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, **kwargs)
        elif f.metadata["choices"]:
            parser.add_argument(flag(f.name), choices=f.metadata["choices"], **kwargs)
        else:
            metavar = {int: "N", float: "X"}.get(kind, "PATH" if f.name in ("data_dir", "cache_dir", "out") else None)
            parser.add_argument(flag(f.name), type=kind, metavar=metavar or f.name.upper(), **kwargs)


def build_parser():
    parser = Parser(prog="engine", description="Train and evaluate small image CNNs fast, on CPU or CUDA.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model and write a run directory",
                                description="Train a model. Every epoch prints the tutorial's line and writes "
                                            "last.pt, best.pt, metrics.jsonl and curves.png to the run directory.")
    add_config_flags(train, ("train", "data", "runtime"))
    train.add_argument("--resume", nargs="?", const=LATEST, metavar="RUN_DIR",
                       help=f"continue a run from its last completed epoch (default RUN_DIR: {LATEST})")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="test accuracy and loss of a checkpoint",
                                   description="Evaluate a checkpoint on its own dataset's test split, or on --data.")
    evaluate.add_argument("checkpoint", metavar="CHECKPOINT", help="a .pt file written by engine train")
    add_config_flags(evaluate, ("data", "runtime"))
    evaluate.set_defaults(func=cmd_eval)

    summary = commands.add_parser("summary", help="layer table of a model with output shapes and parameters",
                                  description="Print a model's layers, output shapes and parameter counts.")
    summary.add_argument("--model", default="cifar_cnn", help="network, by name (default: cifar_cnn)")
    summary.add_argument("--input-shape", metavar="CxHxW", help="input shape, e.g. 1x28x28 (default: the tutorial's)")
    summary.add_argument("--num-classes", type=int, default=10, help="output classes (default: 10)")
    summary.set_defaults(func=cmd_summary)
    return parser


def given(args):
    """The Config fields the user actually passed."""
    names = {f.name for f in dataclasses.fields(Config)}
    return {k: v for k, v in vars(args).items() if k in names}


def log(message):
    print(message, flush=True)


def cmd_train(args):
    from engine.train import train

    values = given(args)
    resume = None
    if args.resume is not None:
        from engine.checkpoint import load, resume_path

        path = resume_path(args.resume).resolve()  # runs/latest -> the run it names
        resume = load(path)
        saved = resume["config"]
        fixed = {f.name for f in dataclasses.fields(Config) if not f.metadata["resume"]}
        if "data" in values:  # the run saved it absolute
            values["data"] = Config(data=values["data"]).with_absolute_paths().data
        for name, value in values.items():
            if name in fixed and saved.get(name) != value:
                raise UsageError(f"--resume continues the run as configured; {flag(name)} {value} differs from its "
                                 f"{saved.get(name)} (start a new run to change it)")
        values = dict(saved, **values)
        values["out"] = str(path.parent)
    cfg = Config.from_dict(values) if resume else Config(**values)
    train(cfg, resume=resume, log=log)
    return 0


def cmd_eval(args):
    from engine.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, given(args), log=log)
    print(f"Test_acc:{result['test_acc'] * 100:.1f}%, Test_loss:{result['test_loss']:.3f} "
          f"({result['images']:,} test images of {result['data']}; checkpoint after epoch {result['epoch']})")
    return 0


def cmd_summary(args):
    from engine.models import MODELS, build_model, format_summary

    shape = MODELS[args.model].reference_shape if args.model in MODELS else (3, 32, 32)  # build_model names bad models
    if args.input_shape:
        try:
            shape = tuple(int(v) for v in args.input_shape.lower().split("x"))
        except ValueError:
            shape = ()
        if len(shape) != 3 or min(shape) < 1:
            raise UsageError(f"--input-shape {args.input_shape}: expected CxHxW with positive numbers, e.g. 3x32x32")
    print(format_summary(args.model, build_model(args.model, shape, args.num_classes), shape))
    return 0


def main(argv=None):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return args.func(args)
    except Interrupted as error:
        print(f"engine: {error}", file=sys.stderr)
        return error.exit_code
    except EngineError as error:
        print(f"engine: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("engine: interrupted", file=sys.stderr)
        return 130
    except OSError as error:  # a full disk, a vanished file: the environment, not a bug
        print(f"engine: error: {error}", file=sys.stderr)
        return 1
    except SystemExit as exit:  # --help from main(argv)
        return exit.code if isinstance(exit.code, int) else 0
