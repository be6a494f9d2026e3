"""Skip marks (the `cuda` marker's skip among them) and shared fixtures, defined once for the whole suite.

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

requires_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
# `@pytest.mark.cuda` (registered in pyproject.toml) marks a test that needs a CUDA GPU: it skips
# without one (pytest_runtest_setup below), and `.ci/gpu` selects them all with `-m cuda`.
requires_cuda = pytest.mark.cuda  # the old name of the same mark


@pytest.hookimpl(tryfirst=True)  # before any fixture of the test is set up
def pytest_runtest_setup(item):
    """Skip a test marked `cuda` on a machine without a CUDA GPU. bench/conftest.py imports this hook."""
    if not HAS_CUDA and item.get_closest_marker("cuda") is not None:
        pytest.skip("needs a CUDA GPU (marked cuda)")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A checkpoint trained for one short epoch on the synthetic set: (run directory, best.pt)."""
    from engine.config import Config
    from engine.train import train

    out = tmp_path_factory.mktemp("tiny") / "run"
    train(Config(epochs=1, limit_train=512, limit_test=200, batch_size=64, amp=False, quiet=True, device="cpu",
                 out=str(out)), log=lambda *_: None)
    return out, out / "best.pt"


@pytest.fixture(scope="session")
def tiny_onnx(tiny_run, tmp_path_factory):
    """`tiny_run`'s checkpoint exported (and verified) to a .onnx file."""
    from export.onnx_export import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(path, tiny_run[1], log=lambda *_: None)
    return path
