"""The `engine` command: parse (engine.flags), build the config, call the library, report errors in one line.

`main(argv)` returns the exit code: 0, 1 for a failure of the environment or the files, 2 for
a usage error, 130 when interrupted (Ctrl-C), 143 when terminated (SIGTERM). Errors never show a traceback.
"""

import json
import os
import sys

from engine.config import Config
from engine.config_types import parse_shape
from engine.errors import EngineError, Interrupted, UsageError, say_error, user_code_line
from engine.flags import bare_optional_values, check_dashed_paths, given
from engine.flags import build_parser as parser_with
from engine.target import command_started  # noqa: F401  its import time is --target-acc's clock where /proc is missing


def log(message):
    print(message, flush=True)


def cmd_train(args):
    from engine.target import command_line
    from engine.train import train

    command_line()  # the run's time to accuracy counts from this process's start

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
    if not args.json:
        return _evaluate(args)
    import contextlib

    out = sys.stdout if sys.stdout is not None else open(os.devnull, "w")  # `>&-`: the JSON has no reader
    with contextlib.redirect_stdout(sys.stderr):  # what a model's forward prints stays out of the JSON
        return _evaluate(args, out)


def _evaluate(args, out=None):
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
        source = (f"checkpoint after epoch {result['epoch']}, {result['precision']}; "
                  f"{result['images'] / result['seconds']:,.0f} img/s")
        if result["compile_seconds"] is not None:
            source += f", after compiling for {result['compile_seconds']:.1f} s"
    if args.confusion is not None:
        from engine.runtime import warn

        result["confusion"].save_png(args.confusion, picture_title(result), warn)
    if args.json:
        print(json.dumps({**as_json(result), "confusion_png": args.confusion}), file=out)
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
                         model=args.code)  # says its Verified line, the int8 work, then its Wrote line
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
    from engine.models import format_summary
    from engine.models.reference import parse_model

    if args.checkpoint is not None and args.model is None and not os.path.exists(args.checkpoint):
        try:  # `engine summary nets.py:Net`: a model, given where a checkpoint goes
            parse_model(args.checkpoint)
        except EngineError:
            pass
        else:
            raise UsageError(f"{args.checkpoint} is a model, not a checkpoint: name it with --model (engine summary "
                             f"--model {args.checkpoint})")
    if args.checkpoint is not None:
        from engine.checkpoint import load, model_from_checkpoint

        given = [flag for flag, value in (("--model-args", args.model_args), ("--input-shape", args.input_shape),
                                          ("--num-classes", args.num_classes)) if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: a checkpoint knows its own model, image shape and classes")
        checkpoint = load(args.checkpoint)
        code = parse_model(args.model) if args.model is not None else None
        model = model_from_checkpoint(checkpoint, args.checkpoint, code, say=lambda *_: None)
        spec = checkpoint.spec
        classes = ", ".join(spec.classes[:4]) + (", ..." if len(spec.classes) > 4 else "")
        name = (f"{args.checkpoint} ({checkpoint.ref.label}, epoch {checkpoint.epochs_done}, "  # 1.25 within an epoch
                f"{len(spec.classes)} classes: {classes})")
        print(format_summary(name, model, tuple(spec.shape)))
        return 0
    from engine.models.described import describe

    shape = None if args.input_shape is None else parse_shape(args.input_shape, "--input-shape")  # "" is refused
    print(describe(args.model if args.model is not None else "cifar_cnn", args.model_args, shape, args.num_classes))
    return 0


def build_parser():
    """The `engine` command's parser, each subcommand calling its cmd_ function."""
    return parser_with({"train": cmd_train, "eval": cmd_eval, "export": cmd_export, "predict": cmd_predict,
                        "summary": cmd_summary})


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
            if argv is None:  # the process's own command: a Ctrl-C while Python exits after it (torch's teardown
                import atexit  # takes a second) would print "Exception ignored ... KeyboardInterrupt" and exit 0

                atexit.register(signal.signal, signal.SIGINT, signal.SIG_IGN)


def run_command(argv):
    parser = build_parser()
    for stream in (sys.stdout, sys.stderr):  # a class name an ASCII terminal cannot show is escaped, not a traceback
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        check_dashed_paths(argv)  # -cat.png: argparse's words for it would mislead
        try:
            args, unknown = parser.parse_known_args(bare_optional_values(argv))
        except SystemExit as exit:  # --help
            return exit.code if isinstance(exit.code, int) else 0
        if unknown and isinstance(getattr(args, "images", None), list) and not any(w.startswith("-") and w != "-" for w in unknown):
            args.images, unknown = args.images + unknown, []  # predict's images after an option: `a.png --json b.png`
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
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank is interrupted: rank 0 says so
            print("engine: interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, MemoryError) as error:  # out of memory anywhere (GPU or host): one line saying what to lower
        from engine.memory import out_of_memory_line

        line = out_of_memory_line(error) or user_code_line(error)
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
    except (Exception, SystemExit) as error:  # from a user's model code (sys.exit() too, which would end the
        # command without a word, often with status 0): one line naming its file and line
        line = user_code_line(error)
        if line is None:
            raise  # anything else is a bug: its traceback
        say_error(line)
        return 1
