"""What fits where: the test-only memory limit (ENGINE_MEMORY_LIMIT), the GPU's room for a data
split next to the model, and the one line said when the GPU runs out of memory anyway.

The host's available memory is read by engine.data.sources.available_memory, which applies
the limit here; the loader asks `gpu_room` before copying a split to a CUDA device.
"""

import os
import re

LIMIT_VARIABLE = "ENGINE_MEMORY_LIMIT"  # test-only: BYTES of memory (host and GPU) the data may use
GPU_SHARE = 0.5  # of the GPU's free memory a split may take: the model, its activations and optimizer need the rest


def size_text(nbytes):
    """'11.10 GB', under 0.1 GB '2.6 MB', under 0.1 MB '38.4 kB': a size as the one-line messages say it."""
    if nbytes < 1e5:
        return f"{nbytes / 1e3:,.1f} kB"
    return f"{nbytes / 1e9:,.2f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:,.1f} MB"


def memory_limit():
    """ENGINE_MEMORY_LIMIT in bytes, or None. Test-only: it makes a small set behave as one that does
    not fit (decoded into the file cache and streamed), without a dataset larger than the machine."""
    value = os.environ.get(LIMIT_VARIABLE, "").strip()
    if not value:
        return None
    try:
        return max(0, int(float(value)))
    except (ValueError, OverflowError):  # OverflowError: inf
        return None  # a test setting: a bad value is ignored rather than a user-facing error


def gpu_room(device):
    """Bytes of `device` (a CUDA torch.device) a data split may take: a share of its free memory,
    capped by ENGINE_MEMORY_LIMIT."""
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    room = int(free * GPU_SHARE)
    limit = memory_limit()
    return room if limit is None else min(room, limit)


def out_of_memory_line(error):
    """One line for an out-of-memory error (what ran out and what to lower), or None for any other
    error: the GPU's, or the host's (torch's CPU allocator refusing a tensor, Python's MemoryError),
    as when a model whose Linear layer grows with the input is built for a large image size."""
    text = str(error)
    name = type(error).__name__
    host = re.search(r"can't allocate memory: you tried to allocate (\d+) bytes", text)
    if host or isinstance(error, MemoryError):
        asked = f" (it asked for {size_text(int(host.group(1)))} at once)" if host else ""
        return (f"the host ran out of memory{asked}: lower --batch-size (--eval-batch-size where given: evaluations "
                "run in batches of it) or the image size (--image-size; "
                "--input-shape for summary); a Linear layer after the convolutions grows with the image")
    if name != "OutOfMemoryError" and "out of memory" not in text.lower():
        return None
    asked = re.search(r"Tried to allocate ([\d.]+ [KMGT]i?B)", text)
    where = re.search(r"GPU (\d+) has a total capacity of ([\d.]+ [KMGT]i?B) of which ([\d.]+ [KMGT]i?B) is free", text)
    detail = ", ".join(filter(None, [
        f"it asked for {asked.group(1)} more" if asked else None,
        f"GPU {where.group(1)} has {where.group(2)}, {where.group(3)} free" if where else None,
    ]))
    return (f"the GPU ran out of memory{f' ({detail})' if detail else ''}: lower --batch-size (activations grow "
            "with it; --eval-batch-size where given, for evaluations) or --image-size, or run on the CPU with --device cpu")
