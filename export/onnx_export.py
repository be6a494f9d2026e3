"""`engine export`: a checkpoint -> one self-contained, verified ONNX file with its metadata.

The model is rebuilt from the checkpoint alone (eval mode, fp32, CPU), wrapped with the training
normalisation (`engine.normalization.Normalized`), exported with `torch.onnx.export(dynamo=True)`
with a dynamic batch, then checked and compared with PyTorch on real test images before it is
moved into place: a file that fails verification never reaches OUT.
"""

import numbers
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.errors import EngineError, UsageError, first_line, root_cause, trace_failure
from engine.isolation import kept_global_state
from engine.quiet import quiet_exporter
from export.metadata import ModelInfo, utf8
from export.placing import check_out, int8_path  # noqa: F401 (int8_path: part of this module's API)

DEFAULT_CHECKPOINT = Path("runs/latest/best.pt")
VERIFY_IMAGES = 256  # real test images compared between onnxruntime and PyTorch
MIN_VERIFY_IMAGES = 16  # a smaller test set is topped up with random images: batches of 1, 7 and all still differ
MIN_OPSET = 18  # the dynamo exporter's lowest


@dataclass
class ExportResult:
    path: Path
    info: ModelInfo
    parity: object  # verify.Parity, or None with --no-verify
    verified_on: str  # "N test images of DATA" or "N random images (...)"
    int8: object = None  # quantize.Int8Report with --int8

    def lines(self):
        """What `engine export` says of the fp32 file: its verification, then the Wrote line."""
        from engine.memory import size_text

        info = self.info
        said = [self.verified_line()]
        accuracy = f", test accuracy {info.test_accuracy * 100:.2f}%" if info.test_accuracy is not None else ""
        notes = []  # how the checkpoint's figure was measured, where the file or a whole test set differ
        if info.test_accuracy_tta:  # measured on several views of each image; the file runs one
            notes.append(f"with --tta {info.test_accuracy_tta}, where this file runs one view of each image")
        if info.test_accuracy_precision != "fp32":  # the run evaluated under autocast; the file is fp32
            notes.append(f"evaluated in {info.test_accuracy_precision}, where this file runs fp32: engine eval {self.path} scores it")
        limit = (info.config or {}).get("limit_test")
        if limit:  # measured on a seeded subset: engine eval of the whole test set differs
            notes.append(f"on at most {limit:,} of its test images (--limit-test)")
        if accuracy and notes:
            accuracy += f" (the checkpoint's, {'; '.join(notes)})"
        said.append(f"Wrote {self.path} ({size_text(self.path.stat().st_size)}, opset {info.opset}; input float32 "
                    f"Nx{'x'.join(map(str, info.input_size))} in [0, 1], {len(info.classes)} classes{accuracy})")
        return said

    def verified_line(self):
        return (f"Verified on {self.verified_on}: {self.parity.describe()}" if self.parity is not None
                else "Not verified (--no-verify)")


def resolve_checkpoint(checkpoint):
    """The checkpoint to export: the given one, or runs/latest/best.pt."""
    if checkpoint is not None and not str(checkpoint).strip():
        raise UsageError("--checkpoint is an empty path; name a checkpoint (or leave it out for runs/latest/best.pt)")
    if checkpoint:
        return Path(checkpoint)
    if not DEFAULT_CHECKPOINT.is_file():
        raise UsageError(f"no trained run at {DEFAULT_CHECKPOINT.parent} to export; train one with `engine train` "
                         "or pass --checkpoint PATH")
    return DEFAULT_CHECKPOINT.resolve()


def check_exportable(module):
    """One line, before the exporter's page of errors, for what it cannot write: a torch.jit.script-ed
    submodule (torch.export traces Python modules), parameters that are not float32 (the file runs
    float32, and onnxruntime's CPU kernels take no bfloat16 convolution)."""
    inner = getattr(module, "model", module)  # the user's, inside engine.normalization.Normalized
    name = type(inner).__name__
    if isinstance(inner, torch.jit.ScriptModule):  # a factory's `return torch.jit.script(Net())`
        raise UsageError(f"the model is torch.jit.script-ed as a whole ({inner.original_name}), which torch.onnx.export "
                         "(torch.export) cannot trace; return the nn.Module unscripted to export it")
    if any(isinstance(m, torch.jit.ScriptModule) for m in module.modules()):
        raise UsageError(f"{name} holds a torch.jit.script-ed submodule, which torch.onnx.export (torch.export) cannot "
                         "trace; script nothing in the model's __init__ to export it")
    held = [("parameters", p) for p in module.parameters()] + [("buffers", b) for b in module.buffers() if b.is_floating_point()]
    kinds = sorted({(what, str(t.dtype).replace("torch.", "")) for what, t in held if t.dtype != torch.float32})
    if kinds:
        what = kinds[0][0]
        raise UsageError(f"{name}'s {what} are {' and '.join(k for w, k in kinds if w == what)}; the exported file runs "
                         "float32: build the model in float32 (training's --amp runs bf16 where it measures faster)")


def to_onnx(module, sample, path, opset=None):
    """Write `module` (eval, CPU, fp32) to `path` as one file with a dynamic batch; returns its opset."""
    check_exportable(module)
    from export.batch import MAX_BATCH, check_every_batch, exported_for_every_batch, refused_for_the_batch

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    traced = module
    with quiet_exporter() as captured:
        try:
            traced = exported_for_every_batch(module, sample, batch)
            program = torch.onnx.export(traced, (sample,), input_names=["input"], output_names=["logits"],
                                        dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True,
                                        external_data=False, optimize=True, verify=False)
            check_every_batch(program.exported_program)
            program.save(str(path), external_data=False)  # one file: no .onnx.data beside it
        except EngineError:
            raise
        except Exception as error:
            if isinstance(root_cause(error), KeyboardInterrupt):  # Ctrl-C inside the exporter, which wraps it
                raise KeyboardInterrupt from None
            if not_utf8_sources(module):  # (the failure is a codec's message or a pybind11 cast's)
                raise EngineError(f"torch.onnx.export cannot write the source file names it records in the file when "
                                  f"they are not UTF-8: {', '.join(map(utf8, not_utf8_sources(module)))}; move the "
                                  "model's code to a folder whose name is UTF-8") from None
            missing = untranslated_op(root_cause(error), traced)
            if missing:
                raise EngineError(f"torch.onnx.export failed: {missing}") from None
            if root_cause(error) is not error:  # torch.onnx's own message is a page of next steps; the cause is below it
                raise EngineError(f"torch.onnx.export failed: {trace_failure(error)}") from None
            said = f"{error}\n{captured.getvalue()}"
            raise EngineError(f"torch.onnx.export failed: {first_line(said) if said.strip() else type(error).__name__}") from None
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    first = model.graph.input[0].type.tensor_type.shape.dim[0]
    if first.HasField("dim_value"):  # torch.export specialised it: the forward branches on the batch size
        raise EngineError(refused_for_the_batch(f"takes batches of {first.dim_value} only"))
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def untranslated_op(error, traced):
    """'the forward's aten.median.dim (nets.py, line 12: ...) has no ONNX translation ...' for torch.onnx's
    'No ONNX function found for <OpOverload(...)>', naming the user's line where torch.export recorded it; else None."""
    import re

    found = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)', overload='([^']+)'\)>", str(error))
    if not found:
        return None
    op = f"{found.group(1)}.{found.group(2)}".removesuffix(".default")
    where = ""
    if isinstance(traced, torch.export.ExportedProgram):  # the op as traced, before torch.onnx's decompositions
        for node in traced.graph.nodes:
            if str(node.target).removesuffix(".default") == op and node.meta.get("stack_trace"):
                lines = [line.strip() for line in node.meta["stack_trace"].strip().splitlines()]
                frame = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].startswith("File ")), None)
                if frame is not None:
                    code = lines[frame + 1] if frame + 1 < len(lines) else ""
                    where = f" ({lines[frame].removeprefix('File ')}{f': {code}' if code else ''})"
                stack = list((node.meta.get("nn_module_stack") or {}).values())  # [(path, class name)], outermost first
                path = stack[-1][0].removeprefix("model.") if stack and str(stack[0][1]).endswith("Normalized") else \
                    (stack[-1][0] if stack else "")  # engine.normalization.Normalized holds the user's as .model
                if path and os.path.dirname(torch.__file__) in where:  # torch's own line (nn.AdaptiveMaxPool2d's):
                    where = f" (in the model's {path}: {str(stack[-1][1]).rsplit('.', 1)[-1]})"  # the user's module
                break
    return (f"the forward uses {op}{where}, which has no ONNX translation in this torch; compute it with other "
            "operations to export the model")


def not_utf8_sources(module):
    """The source files of `module`'s classes whose paths are not UTF-8 (Linux names may be any bytes)."""
    import inspect

    files = set()
    for m in module.modules():
        try:
            files.add(inspect.getsourcefile(type(m)))
        except TypeError:  # a built-in class
            continue
    return sorted(f for f in files if f and utf8(f) != f)


def write_metadata(path, info: ModelInfo):
    import onnx

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, info.to_props())
    from engine import __version__

    model.producer_name, model.producer_version = "engine", __version__  # was torch's version
    model.doc_string = utf8(f"{info.model} trained on {info.dataset}")
    from export.digest import stamp

    onnx.save(stamp(model), str(path))  # engine_digest: a byte changed later is refused where a session opens


def run_data(checkpoint, log=print):
    """The run's own dataset, or None (said in one line) when it is not available here."""
    from engine.config import Config
    from engine.data import load_dataset

    cfg = dict(checkpoint.config, quiet=True, limit_train=None, limit_test=None, model=Config.model, model_args=None,
               init_from=None, freeze=None)  # the data alone: the model was rebuilt already
    try:
        data = load_dataset(Config.from_dict(cfg), log=lambda *_: None)
    except EngineError as error:
        log(f"The run's data is not available ({error})")
        return None
    if list(data.shape) != list(checkpoint.spec.shape):
        log(f"The run's data has changed (images are now {'x'.join(map(str, data.shape))})")
        return None
    return data


def verification_images(data, shape, count=VERIFY_IMAGES, seed=0):
    """(float32 (N, C, H, W) in [0, 1], where they came from): seeded test images, else random ones."""
    generator = np.random.default_rng(seed)
    if data is None:
        images = generator.integers(0, 256, (count, *shape), dtype=np.uint8)
        return images.astype(np.float32) / 255, f"{count} random images (the run's data is unavailable)"
    pick = np.sort(generator.permutation(len(data.test_x))[:count])
    images, source = data.test_x[pick].numpy(), f"{len(pick)} test images of {data.name}"
    if len(pick) < MIN_VERIFY_IMAGES:  # 5 images: batches of 1, 7 and 5 would be two sizes, one of them whole
        extra = generator.integers(0, 256, (MIN_VERIFY_IMAGES - len(pick), *shape), dtype=np.uint8)
        images, source = np.concatenate([images, extra]), f"{source} and {len(extra)} random images"
    return images.astype(np.float32) / 255, source


@kept_global_state()
def export_onnx(out, checkpoint=None, *, opset=None, verify=True, int8=False, log=print, model=None):
    """Export the checkpoint to `out`; returns an ExportResult. On failure `out` (and with int8 its int8 file)
    are left as they were: both are placed only once both are written (export.placing).
    model: a user model's code named again (`--model nets.py:Net`), which its checkpoint needs."""
    from engine.checkpoint import load, model_from_checkpoint
    from engine.eval_data import check_code
    from engine.normalization import Normalized
    from export import verify as checks
    from export.placing import final_path, place, stage_int8
    from export.session import open_session

    check_code(model, "export_onnx")
    log = (lambda *_: None) if log is None else log  # log=None: silent, as the caller meant
    out = check_out(out)
    for name, value in (("verify", verify), ("int8", int8)):
        if not isinstance(value, (bool, np.bool_)):
            raise UsageError(f"export_onnx's {name} must be True or False, not {value!r}")
    if opset is not None and (not isinstance(opset, numbers.Integral) or isinstance(opset, (bool, np.bool_))):
        raise UsageError(f"--opset must be a whole number, not {opset!r}")
    if int8 and int8_path(out).is_dir():  # found before the export and calibration, not after them
        raise UsageError(f"--int8 writes {int8_path(out)} beside {out}, and that is a directory; move it or choose "
                         "another OUT")
    if int8:  # a link of it that loops or points into a missing folder, before the work too
        check_out(int8_path(out))
    opset = None if opset is None else int(opset)
    if opset is not None and not MIN_OPSET <= opset <= torch.onnx._constants.ONNX_MAX_OPSET:
        raise UsageError(f"--opset {opset}: the exporter writes opsets {MIN_OPSET} to {torch.onnx._constants.ONNX_MAX_OPSET}")
    from engine.models.reference import parse_model

    path = resolve_checkpoint(checkpoint)
    state = load(path)
    spec = state.spec
    code = parse_model(model) if model else None
    module = Normalized(model_from_checkpoint(state, path, code, log), spec.mean, spec.std).eval()
    log(f"Exporting {path} ({state.ref.name}, epoch {state.epochs_done}) to {out}")
    data = run_data(state, log) if verify or int8 else None
    if int8 and data is None:
        raise EngineError("--int8 calibrates on the run's training images, which are not available here; "
                          "export without --int8, or make the run's --data available")
    final = final_path(out)
    temporary, staged = final.with_name(f".{final.name}.tmp{os.getpid()}"), []
    try:
        sample = torch.rand(2, *spec.shape)
        written_opset = to_onnx(module, sample, temporary, opset)
        info = ModelInfo.from_checkpoint(state, written_opset)
        write_metadata(temporary, info)
        checks.check_standard(temporary)
        parity, source = None, "not verified (--no-verify)"
        if verify:
            images, source = verification_images(data, spec.shape)
            session, _ = open_session(temporary, device="cpu")
            parity = checks.check_parity(session, module, images)
        result = ExportResult(out, info, parity, source)
        if int8:  # both files are placed together, once both are written: see export.placing
            log(result.verified_line())
            result.int8, written = stage_int8(temporary, out, data, log)
            staged.append(written)
        place([*staged, (temporary, final)])
    finally:
        for written in (temporary, *(w for w, _ in staged)):
            written.unlink(missing_ok=True)
    for line in result.lines()[1 if int8 else 0:]:
        log(line)
    if not int8 and int8_path(out).is_file():  # an earlier --int8 export's, which no longer matches OUT
        log(f"Note: {int8_path(out)} is an earlier export's int8 file, not this model's; export with --int8 to "
            "replace it, or delete it")
    return result
