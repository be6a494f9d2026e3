"""`engine summary --model`: the image shape and class count a model is described at, and its table.

Without --input-shape and --num-classes a built-in is described at its own shape, any other model at
3x32x32, with 10 classes; where --model-args set what the engine would pass by name (num_classes and
its spellings, in_channels and its spellings, in_shape), the model is described as those arguments
build it, not refused as disagreeing with a default nobody chose. Flags given still win, and a
--model-args that disagrees with them is the build's one line.
"""

from engine.models.logits import CHANNEL_NAMES, CLASS_COUNT_NAMES

DEFAULT_SHAPE = (3, 32, 32)
DEFAULT_CLASSES = 10


def _whole(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def summary_inputs(ref, input_shape=None, num_classes=None):
    """((C, H, W), classes) to describe the model `ref` (a parsed ModelRef) at."""
    from engine.models import MODELS

    args = ref.args or {}
    if input_shape is not None:
        shape = tuple(input_shape)
    elif ref.kind == "builtin":
        shape = tuple(MODELS[ref.name].reference_shape)
    else:
        given = args.get("in_shape")
        channels = next((args[name] for name in CHANNEL_NAMES if _whole(args.get(name))), None)
        if isinstance(given, (list, tuple)) and len(given) == 3 and all(_whole(v) for v in given):
            shape = tuple(given)
        elif channels is not None:
            shape = (channels, *DEFAULT_SHAPE[1:])
        else:
            shape = DEFAULT_SHAPE
    if num_classes is None:
        num_classes = next((args[name] for name in CLASS_COUNT_NAMES if _whole(args.get(name))), DEFAULT_CLASSES)
    return shape, num_classes


def describe(model, model_args=None, input_shape=None, num_classes=None):
    """The layer table `engine summary --model MODEL` prints (`input_shape` (C, H, W) or None)."""
    from engine.models.build import build
    from engine.models.reference import parse_model
    from engine.models.summary import format_summary

    ref = parse_model(model, model_args)
    shape, classes = summary_inputs(ref, input_shape, num_classes)
    try:
        return format_summary(model, build(ref, shape, classes), shape)
    except (RuntimeError, MemoryError) as error:  # memory.py's line names --batch-size, which summary has not
        from engine.errors import EngineError
        from engine.memory import out_of_memory_line

        line = out_of_memory_line(error)
        if line is None:
            raise
        raise EngineError(f"{line.split(':')[0]} building {model} for {classes:,} classes at input "
                          f"{'x'.join(map(str, shape))}: lower --num-classes or --input-shape (the model's "
                          "layers grow with them)") from None
