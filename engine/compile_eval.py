"""Whether a training run's evaluations are compiled (`--compile`): decided by engine.compile_plan's
rule at the run's second evaluation, with the first, eager one as the measure of the work."""

import time

import torch

from engine.compile_plan import WIN_FROM, CompileFailed, decide, key, record
from engine.errors import first_line


class EvalPlan:
    """Whether a training run's evaluations are compiled, decided at its second evaluation.

    The first evaluation runs eagerly and is timed; before the next, the evaluations left times that
    time is the work a compile would serve (`decide`). Where nothing is measured yet, the next one
    compiles (timed apart: one forward on a batch of the eval shape) and is measured against the
    first; a compiled evaluation slower than eager is dropped for the rest of the run, and either
    way the measurement is cached. The compiled model is torch.compile over the same module, so it
    always evaluates the current weights.
    """

    def __init__(self, runtime, ref, shape, evaluations, cache_dir, say=print):
        self.runtime, self.ref, self.shape, self.left = runtime, ref, tuple(shape), evaluations
        self.cache_dir, self.say = cache_dir, say
        self.key = key("eval", ref, shape, runtime)
        self.state, self.eager_s, self.compiled, self.compile_s = "first", None, None, 0.0

    def model(self, module):
        """What to evaluate `module` with this time: itself, or its compiled form."""
        if self.state == "first" or self.state == "eager":
            return module
        if self.state == "undecided":
            decision = decide("eval", self.key, self.cache_dir, self.left * self.eager_s, self.runtime.device.type)
            self.say(f"--compile: evaluation {'compiled' if decision.compile else 'runs eagerly'}: {decision.why}")
            if not decision.compile:
                self.state = "eager"
                return module
            try:
                self.compiled = self._compile(module)
            except CompileFailed as error:
                record(self.cache_dir, self.key, 0.0, 0.0, model=self.ref.label, failed=str(error), what="evaluation")
                self.say(f"--compile: evaluation runs eagerly: Inductor could not compile it ({error})")
                self.state = "eager"
                return module
            self.state = "measuring" if decision.measured is None else "compiled"
        return self.compiled

    def timed(self, seconds, share=1.0):
        """The evaluation just done took `seconds` for `share` of the images (less than 1 where
        --target-acc's screen stopped it): times are compared as whole evaluations."""
        self.left -= 1
        if self.state == "first":
            self.eager_s, self.state = seconds / share, "undecided"
        elif self.state == "measuring":  # this evaluation began with the compile: not part of its time
            ratio = self.eager_s / max((seconds - self.compile_s) / share, 1e-9)
            record(self.cache_dir, self.key, ratio, self.compile_s, model=self.ref.label, batch=self.shape[0],
                   what="evaluation")
            if ratio < WIN_FROM:
                self.say(f"--compile: the compiled evaluation ran {ratio:.2f}x eager: evaluating eagerly from here")
                self.state = "eager"
            else:
                self.state = "compiled"

    def _compile(self, module):
        from engine.inductor import CountingInductor, quiet_compiler

        quiet_compiler()
        compiled = torch.compile(module, backend=CountingInductor(self.runtime.compile_mode))
        memory_format = torch.channels_last if self.runtime.channels_last else torch.contiguous_format
        example = torch.zeros(self.shape, device=self.runtime.device).contiguous(memory_format=memory_format)
        training = module.training
        started = time.perf_counter()
        try:
            with torch.no_grad(), self.runtime.autocast():
                module.eval()
                compiled(example)
        except Exception as error:  # the eager evaluation ran already: the compile failed
            raise CompileFailed(first_line(error)) from error
        finally:
            module.train(training)
        self.compile_s = time.perf_counter() - started
        return compiled
