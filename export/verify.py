"""Proof that an exported file is right: the ONNX checker, standard ops only, and parity with PyTorch.

`check_standard` runs `onnx.checker.check_model(full_check=True)` and refuses ops outside the
default domain (so runtimes other than onnxruntime run the file). `check_parity` runs the file
in onnxruntime and the model in PyTorch on the same images and fails beyond the tolerance.
"""

import math
from dataclasses import dataclass, field

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
        kind = next((k for k in ("bfloat16", "float16") if f"tensor({k})" in str(error)), None)
        hint = (f" (the forward computes in {kind} itself, under torch.autocast or after .to(torch.{kind}): compute "
                "in float32 there; training's --amp is applied around the model, and the file runs float32)") if kind else ""
        raise EngineError(f"the exported model fails the ONNX checker: {first_line(error)}{hint}") from None
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
    by_batch: dict = field(default_factory=dict)  # {batch size: (max |difference|, agreement)}
    note: str = ""  # what PyTorch did that the file does otherwise, and rightly (a single image's batch dimension)
    rounding: float = 0.0  # how far float32 rounding alone moves PyTorch's logits from batch to batch (float64's stay)

    def tolerance(self, atol=ATOL):
        """What two fp32 runs of the graph may differ by: `atol`, plus RTOL of the largest logit."""
        return atol + RTOL * self.scale

    def ok(self, atol=ATOL, min_agreement=MIN_AGREEMENT):
        return self.max_abs_diff <= self.tolerance(atol) and self.agreement >= min_agreement

    def describe(self):
        return (f"max |onnxruntime - PyTorch| {self.max_abs_diff:.2e} on the logits, top-1 agreement "
                f"{agreement_text(self.agreement)}{f' ({self.note})' if self.note else ''}")

    def failing_batches(self, atol=ATOL, min_agreement=MIN_AGREEMENT):
        """' at batches of 1 (those of 7 and 256 agree)': the batch sizes that differ, where some do not."""
        bad = [n for n, (diff, agree) in self.by_batch.items() if diff > self.tolerance(atol) or agree < min_agreement]
        good = [n for n in self.by_batch if n not in bad]
        if not bad or not good:
            return ""
        return (f" at batches of {' and '.join(map(str, bad))} (those of {' and '.join(map(str, good))} agree: the "
                "forward depends on the batch size, e.g. an `if x.shape[0] == 1`)")


def run_session(session, images, batch_size=256):
    """Logits (N, classes) float32 from an onnxruntime session, `batch_size` images a run."""
    name = session.get_inputs()[0].name
    try:
        return np.concatenate([session.run(None, {name: images[i:i + batch_size]})[0]
                               for i in range(0, len(images), batch_size)])
    except Exception as error:  # onnxruntime's own InvalidArgument/Fail types
        raise EngineError(f"onnxruntime could not run the exported file on batches of {batch_size} "
                          f"({first_line(error, 240)}); the file was not written") from None


def eager_logits(module, images, batch_size):
    """(logits (N, classes) of `module` on float32 images, `batch_size` a run, a note or ''). A forward that
    drops the batch dimension of a single image (`x.squeeze()`: (classes,) for one image) is read as one
    row: the exported graph keeps that dimension (torch.export assumes a dynamic batch is never 1)."""
    rows, note = [], ""
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out = module(torch.from_numpy(images[i:i + batch_size]))
            count = len(images[i:i + batch_size])
            tensor = isinstance(out, torch.Tensor)
            if tensor and out.ndim == 1 and count == 1:
                note = f"PyTorch's forward gives {tuple(out.shape)} for a batch of 1, where the file keeps the batch: (1, {len(out)})"
                out = out[None]
            if not tensor or out.ndim != 2 or len(out) != count:
                got = tuple(out.shape) if tensor else f"a {type(out).__name__}"
                raise EngineError(f"PyTorch's forward gives {got} for a batch of {count}, not (batch, classes) logits: "
                                  "the file cannot be verified against it; the file was not written")
            rows.append(out.numpy())
    return np.concatenate(rows), note


def compare(session, module, images, batch_sizes=(256,)):
    """Parity of `session` with `module` (eval, fp32, CPU) on float32 (N, C, H, W) images in [0, 1].

    Each batch size in `batch_sizes` is run, in PyTorch as in onnxruntime, so a file whose batch
    dimension is not really dynamic, or a forward that branches on the batch size (torch.export
    assumes a dynamic size is never 1), fails here rather than in a client.
    """
    by_batch, scale, notes, eager = {}, 0.0, set(), []
    for size in batch_sizes:
        expected, note = eager_logits(module, images, size)
        eager.append(expected)
        got = run_session(session, images, size)
        if got.shape != expected.shape:
            raise EngineError(f"the exported file gives logits of shape {got.shape[1:]} an image, PyTorch {expected.shape[1:]}; "
                              "the file was not written")
        by_batch[size] = (float(np.abs(got - expected).max()), float((got.argmax(1) == expected.argmax(1)).mean()))
        scale = max(scale, float(np.abs(expected).max(initial=0)))
        notes.add(note)
    mixing = max(float(np.abs(e - eager[0]).max()) for e in eager)  # one image's logits, from batch to batch
    wide = float64_mixing(module, images[:8]) if mixing > 10 * (ATOL + RTOL * scale) else None
    rounding = mixing if wide is not None and wide <= ATOL else 0.0
    if rounding:  # float64 keeps each image's logits: float32's rounding moved them, not the batch
        notes.add(f"PyTorch's own float32 logits for an image change with the batch it is in, by up to {mixing:.2e}, "
                  f"where float64's do not: rounding on logits as large as {scale:.3g}")
    elif mixing > 10 * (ATOL + RTOL * scale):  # faithful, but a client's result for an image depends on its batch
        notes.add(f"PyTorch's own logits for an image change with the batch it is in, by up to {mixing:.2e}: the "
                  "forward mixes the images of a batch in evaluation mode (a BatchNorm without running statistics?), "
                  "and so does the file")
    worst = max(diff for diff, _ in by_batch.values())
    agree = min(agreement for _, agreement in by_batch.values())
    return Parity(len(images), worst, agree, scale, by_batch, "; ".join(sorted(filter(None, notes))), rounding)


def float64_mixing(module, images):
    """How much one image's logits change between a batch of all `images` and batches of 1 when
    `module` runs in float64, or None where a float64 copy cannot run: tells float32's rounding (a
    model whose logits reach 1e5 or more, as a run that diverged leaves) from a forward that mixes
    a batch's images."""
    import copy

    try:
        wide = copy.deepcopy(module).double()
        with torch.no_grad():
            x = torch.from_numpy(images).double()
            return float((wide(x) - torch.cat([wide(x[i:i + 1]) for i in range(len(x))])).abs().max())
    except Exception:  # noqa: BLE001 - a module that will not copy or run in float64: nothing to tell
        return None


def changes_between_runs(module, images):
    """The largest difference between two PyTorch runs of `module` on the same images (0 for a forward
    that is a function of its input)."""
    first, _ = eager_logits(module, images, len(images))
    second, _ = eager_logits(module, images, len(images))
    return float(np.abs(first - second).max())


def check_parity(session, module, images, atol=ATOL, min_agreement=MIN_AGREEMENT):
    """Parity, or an EngineError saying by how much the file and PyTorch disagree."""
    parity = compare(session, module, images, batch_sizes=(1, 7, len(images)))
    if not parity.ok(atol, min_agreement):
        drift = changes_between_runs(module, images[:16])
        if drift > parity.tolerance(atol):  # no file can match a forward that is not a function of its input
            raise EngineError(f"verification failed: PyTorch's forward gives other logits for the same images each time it "
                              f"runs in evaluation mode (by up to {drift:.2e}): it is random (dropout with training=True, "
                              "noise) or updates its own state, which an exported file cannot follow; the file was not "
                              "written (--no-verify writes it unchecked)")
        if parity.rounding > parity.tolerance(atol):  # PyTorch's float32 itself moves by more from batch to batch
            raise EngineError(f"verification failed: {parity.describe()}; no file can match PyTorch closer than its "
                              f"own float32 logits match themselves from batch to batch (beyond the tolerance "
                              f"{parity.tolerance(atol):.3g}): logits as large as {parity.scale:.3g} are beyond "
                              "float32's precision (did the training diverge? engine eval gives its loss); the file "
                              "was not written (--no-verify writes it unchecked)")
        raise EngineError(f"verification failed{parity.failing_batches(atol, min_agreement)}: {parity.describe()} "
                          f"(tolerance {atol:g} + {RTOL:g} x the largest |logit| {parity.scale:.3g} = "
                          f"{parity.tolerance(atol):.3g}, {min_agreement * 100:.0f}% agreement); the file was not "
                          "written (--no-verify writes it unchecked)")
    return parity
