"""The exported file's digest: a weight byte changed after export is refused, not silently run.

ONNX has no checksum: a file whose bytes changed on a disk, in a copy or in transit (one flipped bit
inside an initializer, the size unchanged) still loads and gives wrong predictions. `engine export`
writes a sha256 of what the file computes with into its `metadata_props` under `engine_digest`, and
`export.session.open_session` (every onnxruntime session the engine opens) checks it before the
session is made. What it covers: every initializer's name, type, shape and values (however they are
stored: raw_data, typed fields, or an external-data file read back), the nodes (operators, attributes,
Constant values, subgraphs), the graph's inputs and outputs (not value_info, which shape inference
adds), the opsets and local functions, and the metadata keys that preprocessing and class names come
from. A file without the key (exported before
it, or by another tool) is run as before.
"""

import hashlib

from engine.errors import EngineError

KEY = "engine_digest"
ALGORITHM = "sha256"
# the metadata a client's result depends on (export/metadata.py): how pixels are prepared, what each logit is
COVERED_PROPS = ("classes", "input_size", "input_range", "resize", "image_size", "quantization")


def compute(model):
    """'sha256:<hex>' of `model` (an onnx.ModelProto with its tensors' data loaded into it)."""
    import onnx
    from onnx import numpy_helper

    digest, graph = hashlib.new(ALGORITHM), model.graph
    for tensor in graph.initializer:  # by value: raw_data, float_data or an external file's bytes read back alike
        if tensor.data_type == onnx.TensorProto.STRING:  # an object array's bytes would be its pointers
            values = b"\0".join(tensor.string_data)
        else:
            values = tensor.raw_data or numpy_helper.to_array(tensor).tobytes()
        digest.update(f"\0tensor\0{tensor.name}\0{tensor.data_type}\0{list(tensor.dims)}\0{len(values)}\0".encode())
        digest.update(values)
    for part in (*graph.sparse_initializer, *graph.node, *graph.input, *graph.output):  # not value_info: shape
        digest.update(b"\0" + type(part).__name__.encode() + b"\0" + part.SerializeToString(deterministic=True))
    for opset in model.opset_import:
        digest.update(f"\0opset\0{opset.domain}\0{opset.version}".encode())
    for function in model.functions:
        digest.update(b"\0function\0" + function.SerializeToString(deterministic=True))
    props = {p.key: p.value for p in model.metadata_props}
    for key in COVERED_PROPS:
        if key in props:
            digest.update(f"\0prop\0{key}\0{props[key]}".encode())
    return f"{ALGORITHM}:{digest.hexdigest()}"


def stamp(model):
    """Write `model`'s digest into its metadata_props (replacing one copied from another file)."""
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != KEY]
    del model.metadata_props[:]
    for key, value in kept:
        model.metadata_props.add(key=key, value=value)
    model.metadata_props.add(key=KEY, value=compute(model))
    return model


def check(model, path):
    """EngineError, in one line naming `path`, when `model` holds a digest that its contents no longer match."""
    stored = next((p.value for p in model.metadata_props if p.key == KEY), None)
    if stored is None or not stored.startswith(f"{ALGORITHM}:"):  # exported before the digest, or by another tool
        return
    if compute(model) != stored:
        raise EngineError(f"{path} changed after it was exported: its weights, graph or class metadata no longer match "
                          f"the {KEY} engine export wrote in it (a damaged copy?); export it again from its checkpoint")
