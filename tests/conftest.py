"""Skip marks and shared fixtures, defined once for the whole suite.

Triton kernels run in Triton's interpreter when there is no GPU, and the interpreter must be
chosen before triton is first imported, so that is decided here, before any test module loads.
"""

import importlib.util
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
HAS_TRITON = importlib.util.find_spec("triton") is not None

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
requires_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
