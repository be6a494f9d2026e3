"""Whether a model runs on channels_last batches, the engine's default memory format (about 2x faster
convolutions on CPU). A forward that views an activation as if its memory were NCHW-contiguous
(`x.view(x.size(0), -1)` after a convolution) cannot take them: torch raises "view size is not
compatible with input tensor's size and stride". Such a model runs NCHW, said in one line, rather
than stopping at its first step.
"""

import torch
from torch import nn

from engine.errors import first_line
from engine.models.probe import PROBE_BATCH, code_file
from engine.models.copying import buffers_of, restore_buffers
from engine.models.reference import ModelRef
from engine.models.user_code import line_in


def channels_last_problem(model: nn.Module, ref: ModelRef, in_shape, batch=PROBE_BATCH):
    """None where `model` (on the CPU, checked by check_fits) runs a channels_last probe batch in
    training and in evaluation mode; else what its forward raised, as a clause. BatchNorm statistics
    and the global RNG are left as they were."""
    five = next((name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.dim() == 5), None)
    if five is not None:  # Module.to(memory_format=channels_last) converts 4- and 5-d tensors: a 5-d one raises
        return f"its tensor {five} has 5 dimensions (a Conv3d's filters), which channels_last (4-d) cannot lay out"
    probe = torch.zeros(batch, *in_shape).to(memory_format=torch.channels_last)
    training, buffers = model.training, buffers_of(model)
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.train()(probe)
            model.eval()(probe)
    except Exception as error:
        text = first_line(error, 400)
        text = text if len(text) <= 90 else text[:90].rsplit(" ", 1)[0] + " ..."
        file = code_file(ref)
        return f"its forward{line_in(error, file) if file else ''} raised {type(error).__name__} on a channels_last batch: {text}"
    finally:
        model.train(training)
        restore_buffers(model, buffers)
    return None


def fit_memory_format(cfg, runtime, model: nn.Module, ref: ModelRef, in_shape, say, batch=PROBE_BATCH):
    """Turn channels_last off in `cfg` and `runtime` (so the checkpoint's config says so) where `model`
    cannot run channels_last batches, said in one line; nothing where it can, or it is off already."""
    if not cfg.channels_last:
        return
    problem = channels_last_problem(model, ref, in_shape, batch)
    if problem:
        cfg.channels_last = runtime.channels_last = False
        hint = "; .reshape or .flatten(1) in place of that .view takes channels_last" if "view size" in problem else ""
        say(f"channels_last: off, the model runs NCHW (slower on CPU): {problem}{hint}")
