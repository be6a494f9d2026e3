"""Proof that an exported file is right: the ONNX checker, standard ops only, and parity with PyTorch.

`check_standard` runs `onnx.checker.check_model(full_check=True)` and refuses ops outside the
default domain (so runtimes other than onnxruntime run the file). `check_parity` runs the file
in onnxruntime and the model in PyTorch on the same images and fails beyond the tolerance.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch

from engine.errors import EngineError, first_line

ATOL = 1e-4  # fp32 logits: two fp32 implementations of the same graph differ by ~1e-6 here
RTOL = 1e-5  # ... and by a few 1e-7 of the largest logit where logits are large (resnet18's reach 885)
MIN_AGREEMENT = 1.0  # top-1 must agree on every image
STANDARD_DOMAINS = ("", "ai.onnx")


def check_standard(path):
    """The full ONNX check, and no node outside the default domain (no onnxruntime contrib ops)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as error:
        raise EngineError(f"the exported model fails the ONNX checker: {first_line(error)}") from None
    model = onnx.load(str(path), load_external_data=False)
    foreign = sorted({f"{n.domain}.{n.op_type}" for n in model.graph.node if n.domain not in STANDARD_DOMAINS})
    if foreign:
        raise EngineError(f"the exported model uses non-standard ops: {', '.join(foreign)}")



def agreement_text(share):
    """A share of agreeing images as a percentage that reads 100.0% only when every image agrees
    (99.96% is rounded down to 99.9%, not up to 100.0%)."""
    return "100.0%" if share >= 1 else f"{min(math.floor(share * 1000) / 10, 99.9):.1f}%"

@dataclass
class Parity:
    images: int
    max_abs_diff: float
    agreement: float  # share of images whose top-1 class is the same
    scale: float = 0.0  # the largest |logit| PyTorch gave

    def tolerance(self, atol=ATOL):
        """What two fp32 runs of the graph may differ by: `atol`, plus RTOL of the largest logit."""
        return atol + RTOL * self.scale

    def ok(self, atol=ATOL, min_agreement=MIN_AGREEMENT):
        return self.max_abs_diff <= self.tolerance(atol) and self.agreement >= min_agreement

    def describe(self):
        return (f"max |onnxruntime - PyTorch| {self.max_abs_diff:.2e} on the logits, top-1 agreement "
                f"{agreement_text(self.agreement)}")


def run_session(session, images, batch_size=256):
    """Logits (N, classes) float32 from an onnxruntime session, `batch_size` images a run."""
    name = session.get_inputs()[0].name
    try:
        return np.concatenate([session.run(None, {name: images[i:i + batch_size]})[0]
                               for i in range(0, len(images), batch_size)])
    except Exception as error:  # onnxruntime's own InvalidArgument/Fail types
        raise EngineError(f"onnxruntime could not run the exported file on batches of {batch_size} "
                          f"({first_line(error, 240)}); the file was not written") from None


def compare(session, module, images, batch_sizes=(256,)):
    """Parity of `session` with `module` (eval, fp32, CPU) on float32 (N, C, H, W) images in [0, 1].

    Each batch size in `batch_sizes` is run, in PyTorch as in onnxruntime, so a file whose batch
    dimension is not really dynamic, or a forward that branches on the batch size (torch.export
    assumes a dynamic size is never 1), fails here rather than in a client.
    """
    worst, agree = 0.0, 1.0
    for size in batch_sizes:
        with torch.no_grad():
            expected = np.concatenate([module(torch.from_numpy(images[i:i + size])).numpy()
                                       for i in range(0, len(images), size)])
        got = run_session(session, images, size)
        worst = max(worst, float(np.abs(got - expected).max()))
        agree = min(agree, float((got.argmax(1) == expected.argmax(1)).mean()))
    return Parity(len(images), worst, agree, float(np.abs(expected).max(initial=0)))


def check_parity(session, module, images, atol=ATOL, min_agreement=MIN_AGREEMENT):
    """Parity, or an EngineError saying by how much the file and PyTorch disagree."""
    parity = compare(session, module, images, batch_sizes=(1, 7, len(images)))
    if not parity.ok(atol, min_agreement):
        raise EngineError(f"verification failed: {parity.describe()} (tolerance {atol:g} + {RTOL:g} x the largest "
                          f"|logit| {parity.scale:.3g} = {parity.tolerance(atol):.3g}, {min_agreement * 100:.0f}% "
                          "agreement); the file was not written (--no-verify writes it unchecked)")
    return parity
