"""A model file that changes torch's process-wide state at its top level: `torch.set_grad_enabled(False)`
(an inference script's first line) failed `engine train`'s first backward with torch's traceback
('element 0 of tensors does not require grad'), and `torch.set_default_dtype(torch.float64)` built a
float64 model the engine then refused as one that 'returns float64 logits'. The import now puts both
back, each said in one warning line, and the run trains, through the real command; so does a factory
function that turns gradients off before it builds the model.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # two subprocesses a case, ~11 s

HEAD = {
    "no_grad": "torch.set_grad_enabled(False)",
    "float64": "torch.set_default_dtype(torch.float64)",
    "no_grad_in_factory": "",
}
NET = '''
import torch
import torch.nn as nn

{head}


class Net(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).relu().mean((2, 3)))


def make(num_classes):
    torch.set_grad_enabled(False)
    return Net(num_classes)
'''


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_model_import_state") / "photos"
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("case", sorted(HEAD))
def test_a_model_file_changing_torchs_global_state_at_import_still_trains_and_exports(photos, tmp_path, case):
    (tmp_path / "nets.py").write_text(NET.format(head=HEAD[case]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ENGINE_CACHE_DIR": str(tmp_path / "cache")}

    def engine(*args):
        return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True,
                              cwd=tmp_path, env=env, timeout=300)

    code = "nets.py:make" if case == "no_grad_in_factory" else "nets.py:Net"
    trained = engine("train", "--model", code, "--data", photos, "--epochs", "1", "--batch-size", "4",
                     "--no-amp", "--device", "cpu", "--quiet", "--out", "run")
    assert trained.returncode == 0, trained.stderr
    assert "Traceback" not in trained.stderr
    expected = {"no_grad": "nets.py turns gradients off when imported (torch.set_grad_enabled); the engine turns "
                           "them back on: training needs them",
                "no_grad_in_factory": "nets.py turns gradients off when make is called (torch.set_grad_enabled)",
                "float64": "nets.py sets torch's default dtype to torch.float64 when imported; the engine keeps "
                           "torch.float32"}[case]
    assert expected in trained.stderr
    exported = engine("export", "m.onnx", "--checkpoint", "run/best.pt", "--model", code)
    assert exported.returncode == 0, exported.stderr
    assert "Verified on" in exported.stdout
