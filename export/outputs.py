"""What a file's output holds: logits, probabilities or log-probabilities, read from the node that makes it.

A model whose forward ends in a softmax (a user model trained so, which training warns of, or another
exporter's file with a Softmax last) gives probabilities: a softmax over them again squeezes every
image toward an even split (a model 100% sure of `bird` was shown as `bird 57.6%`). The kind is read
from the graph once, when the file is opened; ops that only reshape are looked through.
"""

import numpy as np

LOGITS, PROBABILITIES, LOG_PROBABILITIES = "logits", "probabilities", "log-probabilities"
ENDINGS = {"Softmax": PROBABILITIES, "LogSoftmax": LOG_PROBABILITIES}
RESHAPING = ("Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze")  # the values pass through unchanged


def output_kind(model):
    """LOGITS, PROBABILITIES or LOG_PROBABILITIES for an onnx ModelProto's first output: what the node
    making it computes, over the class axis (1 or -1 of the (N, classes) output)."""
    makers = {out: node for node in model.graph.node for out in node.output}
    name = model.graph.output[0].name
    node = makers.get(name)
    while node is not None and node.op_type in RESHAPING and node.input:
        node = makers.get(node.input[0])
    if node is None or node.domain not in ("", "ai.onnx") or node.op_type not in ENDINGS:
        return LOGITS
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1 if _opset(model) >= 13 else 1)
    return ENDINGS[node.op_type] if axis in (1, -1) else LOGITS


def _opset(model):
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


def probabilities(values, kind):
    """(N, classes) probabilities (each row sums to 1) from the file's output `values` of `kind`."""
    values = np.asarray(values)
    if kind == PROBABILITIES:
        return values
    if kind == LOG_PROBABILITIES:
        return np.exp(values)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN or infinite logits: NaN rows, which predict refuses
        shifted = np.exp(values - values.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
