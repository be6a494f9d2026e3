"""An evaluation that ran out of memory said to lower --batch-size, which does nothing to `engine eval
--eval-batch-size N` (nor to a training run's evaluations at --eval-batch-size): the line names it too."""

import pytest
import torch

from engine.memory import out_of_memory_line


def test_the_host_line_names_the_evaluations_batch_size():
    with pytest.raises(RuntimeError) as caught:
        torch.empty(2**50, dtype=torch.uint8)  # a petabyte: torch's CPU allocator refuses it
    line = out_of_memory_line(caught.value)
    assert line.startswith("the host ran out of memory") and "--eval-batch-size" in line and "\n" not in line


def test_the_gpu_line_names_it_too():
    line = out_of_memory_line(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))  # torch's wording
    assert line.startswith("the GPU ran out of memory") and "--eval-batch-size" in line
