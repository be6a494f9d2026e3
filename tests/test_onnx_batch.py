"""export.batch: an exported file holds for every batch size, or its export is one line saying for which it holds.

torch.onnx.export alone narrowed a forward that branches on the batch size (`if x.shape[0] > 300`) to the
sizes the branch it traced holds for, and wrote a file whose input still read as any batch: a client's
batch of 301 ran the other branch, silently, and verification on 256 images could not see it.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from engine.errors import EngineError
from export.onnx_export import to_onnx

pytestmark = pytest.mark.filterwarnings("ignore")  # torch.export's own warnings about the traced code


class OverABatchOf(torch.nn.Module):
    """Another result for batches above `limit` images than for those up to it."""

    def __init__(self, limit):
        super().__init__()
        self.limit, self.head = limit, torch.nn.Linear(3, 4)

    def forward(self, x):
        logits = self.head(x.mean((2, 3)))
        if x.shape[0] > self.limit:
            return logits * 0
        return logits


class OddBatches(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(3, 4)

    def forward(self, x):
        logits = self.head(x.mean((2, 3)))
        return logits if x.shape[0] % 3 == 2 else logits + 1


class Pairs(torch.nn.Module):
    """Reshapes the batch into pairs of images: no graph for an odd batch."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(6, 4)

    def forward(self, x):
        return self.head(x.mean((2, 3)).reshape(-1, 6)).repeat_interleave(2, 0)


@pytest.mark.parametrize("model, said", [
    (OverABatchOf(300), "holds only for batches of N images where 2 <= N and N <= 300"),
    (OddBatches(), "holds only for batches of N images where (N % 3) == 2"),
    (Pairs(), "holds only for batches of N images where"),
])
def test_a_forward_that_holds_for_some_batch_sizes_is_refused_in_one_line(model, said, tmp_path):
    with pytest.raises(EngineError) as raised:
        to_onnx(model.eval(), torch.rand(2, 3, 8, 8), tmp_path / "m.onnx")
    assert said in str(raised.value) and "the model's forward depends on the batch size" in str(raised.value)
    assert "\n" not in str(raised.value) and not (tmp_path / "m.onnx").exists()


@pytest.mark.slow  # an export and five onnxruntime runs: about 4 s
def test_a_forward_of_any_batch_exports_and_runs_every_batch_size(tmp_path):
    import onnxruntime as ort

    model = OverABatchOf(1 << 30).eval()  # a branch no batch reaches: one graph for every batch size
    to_onnx(model, torch.rand(2, 3, 8, 8), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, 8, 8]
    images = np.random.default_rng(0).random((301, 3, 8, 8), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    for size in (1, 2, 7, 301):
        np.testing.assert_allclose(session.run(None, {"input": images[:size]})[0], expected[:size], atol=1e-5)


NETS = '''
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, num_classes)

    def forward(self, x):
        logits = self.head(self.conv(x).mean((2, 3)))
        if x.shape[0] > 300:  # a batch above 300 images: another result
            return logits * 0
        return logits
'''


@pytest.mark.slow  # a training and an export in a subprocess
def test_engine_export_refuses_a_user_model_that_branches_on_a_large_batch(tmp_path):
    from engine.config import Config
    from engine.train import train

    (tmp_path / "nets.py").write_text(NETS)
    run, _ = train(Config(model=str(tmp_path / "nets.py") + ":Net", epochs=1, limit_train=64, limit_test=32,
                          batch_size=32, amp=False, device="cpu", quiet=True, out=str(tmp_path / "run")),
                   log=lambda *_: None)
    result = subprocess.run([sys.executable, "-m", "engine", "export", "m.onnx", "--checkpoint", str(run / "best.pt"),
                             "--model", "nets.py:Net"], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("engine: error:")]
    assert len(errors) == 1 and "where 2 <= N and N <= 300" in errors[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "m.onnx").exists()
