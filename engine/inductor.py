"""How the engine hands graphs to Inductor: `CountingInductor`, the torch.compile backend of every
prepared model, which counts its graphs and runs CPU training graphs eagerly where asked, and
`quiet_compiler`, which keeps torch's CUDA_HOME line off a CPU run."""

import logging

_graphs = [0]  # graphs handed to Inductor in this process, by every CountingInductor
_said = []  # the build failures said in this process, each once
QUIETED = ("torch.utils.cpp_extension", "torch._dynamo.variables.tensor")  # quiet_compiler's (engine.isolation puts back)


class CountingInductor:
    """The torch.compile backend of prepared models: counts the graphs Dynamo hands it, then
    compiles each with Inductor as `torch.compile(mode=...)` would, except that training graphs
    (built with grad enabled) run eagerly when `eager_training`.

    Why: Inductor's CPU training graph can lose to eager (cifar_cnn batch 64: 0.81x fp32, 0.74x bf16
    on a Xeon; 0.65x fp32 on a Zen 3; docs/performance.md has the profiles), so on CPU whether a
    training graph is compiled is measured per model and machine (engine/compile_plan.py), and where
    it is not, the graph Dynamo captured runs eagerly: the same ATen calls as eager. CUDA compiles
    everything.

    A backend is a callable (gm, example_inputs) -> callable (the documented custom-backend
    contract); Dynamo calls it once per graph it builds, so the count grows on every recompile.
    torch.compiler has no public counter of its own; torch._inductor.compile and
    list_mode_options are that package's declared API (its __all__).
    """

    def __init__(self, mode="default", eager_training=False, warn=None):
        # warn: a graph Inductor cannot build (no working C++ compiler) runs eagerly, said once through it;
        # None raises (compile_plan's measurements, which decide on eager then)
        self.mode, self.eager_training, self.warn = mode, eager_training, warn

    def __call__(self, gm, example_inputs):
        import torch._inductor

        training = torch.is_grad_enabled()  # Dynamo calls backends in the caller's grad mode
        if self.eager_training and training:
            _graphs[0] += 1
            return gm.forward
        options = torch._inductor.list_mode_options(self.mode)
        if training and hasattr(torch._inductor.config, "emulate_precision_casts"):
            # Round each low-precision intermediate as eager does. Without it a bf16 graph keeps a fused
            # GELU's output in fp32 while the max taken over it is stored in bf16, so the max's backward
            # (the gradient shared among the elements equal to the max) finds none equal and divides
            # by 0: fast_cifar's first bf16 step gave NaN gradients under Inductor.
            options = {**options, "emulate_precision_casts": True}
        try:
            built = torch._inductor.compile(gm, example_inputs, options=options)
        except Exception as error:
            from torch._dynamo.exc import BackendCompilerFailed, TorchDynamoException

            if self.warn is None or (isinstance(error, TorchDynamoException) and not isinstance(error, BackendCompilerFailed)):
                raise  # Dynamo's own signals pass (TensorifyScalarRestartAnalysis: `.item()` in a forward)
            from engine.errors import first_line

            line = f"--compile: Inductor could not compile a graph of the model ({first_line(error)}): it runs eagerly"
            if line not in _said:
                _said.append(line)
                self.warn(line)
            return gm.forward
        _graphs[0] += 1  # a graph that failed to build is not one (its evaluation runs eagerly: compile_plan)
        return built


def quiet_compiler():
    """Keep torch's "No CUDA runtime is found, using CUDA_HOME=..." off a CPU run's terminal: Inductor's
    C++ build imports torch.utils.cpp_extension, which warns whenever there is no CUDA, a line that
    means nothing to a CPU user. Set before the import, by every path that compiles. Nor Dynamo's
    12-line advice on a forward's `.item()` (a graph break, which it handles: the user's code is fine)."""
    for name in QUIETED:
        logging.getLogger(name).setLevel(logging.ERROR)


def compiled_graphs():
    """How many graphs torch.compile has built in this process for prepared models (grows on
    every recompile)."""
    return _graphs[0]
