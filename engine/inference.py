"""Ahead-of-time compiled inference (torch.export + AOTInductor) for a model whose weights are fixed.

`engine eval CHECKPOINT --compile` on CPU runs this instead of torch.compile. Both run the code
Inductor generates; they differ in what each call costs around it. torch.compile guards, then
goes through AOTAutograd's wrapper and a Python wrapper per graph: about 80 us a call on the
2-core CPUs, more than the compiled code saves on a small batch (cifar_cnn at batch 1 ran 0.97x
eager). AOTInductor compiles the same graph into a shared library called from C++: 1.37x eager
at batch 1 and 1.16x at batch 256 (Xeon, alternated medians). The library holds one input shape
and a copy of the weights.
"""

import os
import tempfile

import torch

from engine.errors import EngineError, first_line
from engine.runtime import Runtime, quiet_compiler


class CompiledInference(torch.nn.Module):
    """A model compiled ahead of time for batches of exactly `shape` (B, C, H, W), in eval mode.

    Called like the model; inputs are made `memory_format` first (the library assumes the
    strides it was compiled for). Ambient autocast does not reach inside: the precision was
    fixed when the graph was exported.
    """

    def __init__(self, runner, shape, memory_format):
        super().__init__()
        self.runner, self.shape, self.memory_format = runner, tuple(shape), memory_format

    def forward(self, x):
        if tuple(x.shape) != self.shape:
            raise EngineError(f"this model was compiled for batches of shape {list(self.shape)}, got {list(x.shape)}")
        return self.runner(x.contiguous(memory_format=self.memory_format))


def compile_inference(model, shape, runtime: Runtime, memory_format=torch.channels_last):
    """`model` (on runtime's device, in eval mode from here on) compiled ahead of time for batches
    of `shape` under runtime's autocast; takes seconds (a C++ compile)."""
    import torch._inductor  # the package's declared API: aoti_compile_and_package, aoti_load_package

    quiet_compiler()
    model.eval()
    example = torch.zeros(shape, device=runtime.device).contiguous(memory_format=memory_format)
    try:
        with torch.no_grad(), runtime.autocast():  # autocast's casts become part of the graph
            program = torch.export.export(model, (example,))
    except Exception as error:  # a model torch.export cannot trace: say which, in one line
        raise EngineError(f"--compile: torch.export could not trace {type(model).__name__}: {first_line(error)}") from error
    with tempfile.TemporaryDirectory(prefix="engine-aoti-") as folder:
        try:  # a C++ build: no compiler, or a full disk, ends here
            options = {k: v for k, v in torch._inductor.list_mode_options(runtime.compile_mode).items()
                       if k != "triton.cudagraphs"}  # --compile-mode; CUDA graphs are torch.compile's alone
            package = torch._inductor.aoti_compile_and_package(program, package_path=os.path.join(folder, "model.pt2"),
                                                               inductor_configs=options)
        except Exception as error:
            raise EngineError(f"--compile: AOTInductor could not build the model ({first_line(error)}); "
                              "evaluate without --compile") from error
        runner = torch._inductor.aoti_load_package(package)  # extracts the library: the package can go
    return CompiledInference(runner, shape, memory_format)
