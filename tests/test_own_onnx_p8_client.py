"""Acceptance, as a client with onnxruntime alone would use the file: a user model (FILE.py:factory with
BatchNorm, Dropout, PReLU, GroupNorm, AdaptiveAvgPool to a non-square size) trained on grey 20x28 images,
exported, run by a plain onnxruntime session at batches 1, 7 and 300 against the checkpoint's weights in the
user's own eager module, normalised by hand from the file's metadata. And export's two halves stay apart."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

NETS = '''
import torch.nn as nn
import torch.nn.functional as F


class Odd(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.PReLU())
        self.gn = nn.GroupNorm(2, 8)
        self.drop, self.drop2d = nn.Dropout(0.3), nn.Dropout2d(0.2)
        self.pool = nn.AdaptiveAvgPool2d((3, 2))
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.drop2d(F.hardswish(self.gn(x)) + x)
        x = self.pool(F.max_pool2d(x, 2, ceil_mode=True)).flatten(1)
        return self.fc(self.drop(x))


def factory(num_classes=10, in_channels=3):
    return Odd(num_classes, in_channels)
'''


@pytest.mark.slow
def test_a_plain_onnxruntime_client_matches_the_user_models_eager_logits(tmp_path):
    import importlib.util

    import onnxruntime as ort
    from PIL import Image

    from engine.config import Config
    from engine.train import train
    from export.onnx_export import export_onnx

    generator = np.random.default_rng(0)
    for split, count in (("train", 16), ("test", 6)):
        for shade, name in enumerate(("cat", "dög", "bird")):
            folder = tmp_path / "grey" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = 40 + 60 * shade + generator.integers(0, 80, (28, 20))
                Image.fromarray(pixels.astype(np.uint8), "L").save(folder / f"{i}.png")
    (tmp_path / "nets.py").write_text(NETS)
    run = tmp_path / "run"
    train(Config(model=f"{tmp_path / 'nets.py'}:factory", data=str(tmp_path / "grey"), epochs=1, batch_size=16,
                 amp=False, quiet=True, device="cpu", out=str(run)), log=lambda *_: None)
    out = tmp_path / "grey model ö.onnx"
    export_onnx(out, run / "best.pt", model=f"{tmp_path / 'nets.py'}:factory", verify=False, log=None)

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == ["bird", "cat", "dög"] and json.loads(meta["input_size"]) == [1, 28, 20]
    assert meta["input_range"] == "0-1" and meta["resize"] == "stretch"
    mean, std = np.float32(json.loads(meta["mean"])), np.float32(json.loads(meta["std"]))
    state = torch.load(run / "best.pt", weights_only=True)
    assert np.allclose(mean, state["data"]["mean"]) and np.allclose(std, state["data"]["std"])
    spec = importlib.util.spec_from_file_location("client_nets", tmp_path / "nets.py")
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)
    eager = nets.factory(num_classes=3, in_channels=1)
    eager.load_state_dict(state["model"])
    eager.eval()
    assert session.get_inputs()[0].shape[0] == session.get_outputs()[0].shape[0]  # one symbolic batch dimension
    for batch in (1, 7, 300):
        x = generator.random((batch, 1, 28, 20), dtype=np.float32)
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        with torch.no_grad():
            want = eager(torch.from_numpy((x - mean[:, None, None]) / std[:, None, None])).numpy()
        assert got.shape == (batch, 3)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def module_imports(path):
    tree = ast.parse(Path(path).read_text())
    return {node.module if isinstance(node, ast.ImportFrom) else alias.name
            for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in node.names}


def test_quantize_and_onnx_export_do_not_import_each_other():
    root = Path(__file__).resolve().parents[1] / "export"
    assert "export.onnx_export" not in module_imports(root / "quantize.py")
    assert "export.quantize" not in module_imports(root / "onnx_export.py")
