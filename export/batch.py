"""The batch dimension of an exported file: torch.export asked for a graph that holds for every batch size.

A forward that depends on the batch size (`if x.shape[0] > 300`, `x.shape[0] % 2`, a reshape to a fixed
batch) has no such graph, and is refused in one line saying for which sizes it holds. torch.onnx.export
alone does not refuse it: it narrows the batch to the sizes the graph holds for and writes a file whose
input still reads as any batch size.
"""

import re

import torch

from engine.errors import EngineError

MAX_BATCH = 1 << 20  # the largest batch size the file is exported (and torch.export asked) for


def exported_for_every_batch(module, sample, batch):
    """torch.export's program of `module` for every batch size, or `module` itself where torch.export
    fails for another reason (torch.onnx then tries its other ways, and says why none works).

    torch.onnx.export catches torch.export's complaint that the forward holds only for some batch sizes
    (`if x.shape[0] > 300`, `x.shape[0] % 2`) and quietly exports for the sizes it does hold for, in a
    file whose batch dimension still reads as any size (torch 2.14: batches above 300 ran the other
    branch, verified on 256 images). Exported here first, that complaint is one line."""
    try:
        return torch.export.export(module, (sample,), dynamic_shapes=({0: batch},), strict=False)
    except Exception as error:
        if "Constraints violated" not in str(error):
            return module
        raise EngineError(batch_dependence(str(error))) from None


def batch_dependence(message):
    """One line for torch.export's 'Constraints violated (batch)' `message`: which batch sizes the graph holds for."""
    constant = re.search(r"specialized it to be a constant \((\d+)\)", message)
    guard = re.search(r"satisfy the generated guard (.+?)\.?$", message, re.MULTILINE)
    if constant:
        return refused_for_the_batch(f"takes batches of {constant.group(1)} only")
    if guard:  # e.g. "2 <= L['x'].size()[0] and L['x'].size()[0] <= 300", "(L['x'].size()[0] % 2) == 0"
        where = re.sub(r"L\[[^\]]*\]\.size\(\)\[0\]", "N", guard.group(1))
        return refused_for_the_batch(f"holds only for batches of N images where {where}")
    return refused_for_the_batch("holds only for some batch sizes")


def refused_for_the_batch(sizes):
    return (f"the exported graph {sizes}: the model's forward depends on the batch size (e.g. an `if x.shape[0] ...` "
            "or a reshape to a fixed batch), so no file for any batch can be written; make the forward the same for "
            "every batch size")


def check_every_batch(program):
    """One line where torch.onnx's program holds only for some batch sizes (its fallbacks narrow the range)."""
    if program is None:
        return
    user = set(program.graph_signature.user_inputs)
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name in user)
    size = node.meta["val"].shape[0]
    if not isinstance(size, torch.SymInt):
        return  # a constant batch: the file's input says so, and to_onnx refuses it
    expression = size.node.expr
    bounds = program.range_constraints.get(expression)
    if not expression.is_Symbol:  # e.g. 2*s77: even batches only
        raise EngineError(refused_for_the_batch(f"holds only for batches of {expression} images"))
    if bounds is not None and bounds.upper < MAX_BATCH:  # (batch 1, which torch.export assumes away, is verified)
        raise EngineError(refused_for_the_batch(f"holds only for batches of {max(int(bounds.lower), 1)} to "
                                                f"{bounds.upper} images"))
