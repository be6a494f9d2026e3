"""onnxruntime sessions: check a file before use, pick the provider that really runs, read its metadata.

onnxruntime-gpu on a machine without a usable CUDA quietly falls back to the CPU, so the
provider is read back from `session.get_providers()` and reported, never assumed. Sessions run
with full graph optimisation and one intra-op thread per physical core.
"""

import contextlib
import os
from pathlib import Path

from engine.errors import EngineError, UsageError, first_line


def physical_cores():
    """Cores this process may run on, counting hyper-threads of one core once (Linux), else os.cpu_count()."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        base = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((base / "physical_package_id").read_text().strip(), (base / "core_id").read_text().strip()))
        except OSError:
            cores.add(("", str(cpu)))
    return max(len(cores), 1)


def load_checked(path):
    """The ModelProto at `path`, or one line saying why it is not a usable ONNX model."""
    import onnx

    if not str(path).strip():
        raise UsageError("the model is an empty path; name an .onnx file")
    path = Path(path)
    if not path.exists():
        raise EngineError(f"{path}: no such file")
    if not path.is_file():
        raise EngineError(f"{path} is not a file (expected an .onnx model)")
    if path.stat().st_size == 0:
        raise EngineError(f"{path} is empty, not an ONNX model")
    with open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04":  # torch.save's zip container, not a protobuf
            raise EngineError(f"{path} looks like a PyTorch checkpoint, not an ONNX model; "
                              f"export it first: engine export MODEL.onnx --checkpoint {path}")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as error:  # DecodeError, ValidationError, OSError: all mean "not a usable model"
        raise EngineError(f"{path} is not a valid ONNX model ({first_line(error, 160)})") from None
    if len(model.graph.input) != 1 or len(model.graph.output) < 1:
        raise EngineError(f"{path}: expected one image input and a logits output, found {len(model.graph.input)} inputs")
    elem = model.graph.input[0].type.tensor_type.elem_type  # another exporter's uint8 or float16 images: onnxruntime's
    if elem != onnx.TensorProto.FLOAT:  # 'Unexpected input data type' at the first batch, where this says it at once
        raise EngineError(f"{path} takes {onnx.TensorProto.DataType.Name(elem).lower()} input; the engine feeds float32 "
                          "pixels in [0, 1]: export the model with a float32 input")
    return model


def _proto(path):
    """The ModelProto at `path` for its digest; a file onnx cannot read is left to onnxruntime's own line."""
    import onnx

    try:
        return onnx.load(str(path))
    except Exception:  # DecodeError, OSError: onnxruntime says why below, as before
        return onnx.ModelProto()


@contextlib.contextmanager
def _ort_quiet(ort):
    """Keep onnxruntime's provider-loading complaints (a missing CUDA) off the terminal."""
    ort.set_default_logger_severity(4)
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)


def open_session(path, *, device="auto", threads=None, model=None):
    """(session, provider) for `path`: CUDA when asked or available and it really loads, else CPU.
    A file whose engine_digest its contents no longer match is refused first (export/digest.py);
    model: its ModelProto where the caller loaded it already (load_checked), else it is read here."""
    import onnxruntime as ort

    from export.digest import check

    path = os.fspath(path)  # any os.PathLike: onnxruntime takes a str
    check(model if model is not None else _proto(path), path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or physical_cores()
    options.log_severity_level = 3
    wanted = ["CPUExecutionProvider"]
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        wanted.insert(0, "CUDAExecutionProvider")
    try:
        with _ort_quiet(ort):
            session = ort.InferenceSession(str(path), options, providers=wanted)
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
        raise EngineError(f"onnxruntime cannot run {path} ({first_line(error)})") from None
    provider = session.get_providers()[0]
    if device == "cuda" and provider != "CUDAExecutionProvider":
        raise EngineError("--device cuda: onnxruntime's CUDA provider does not load here (no usable CUDA); use --device cpu")
    return session, provider
