"""A user model whose constructor draws values it keeps outside its state dict (a `persistent=False`
buffer, a plain tensor attribute: a fixed random projection) is rebuilt by eval and export with the
values the run trained with: the checkpoint cannot hold them, so the engine builds the model as
training built it, right after seeding with the run's seed. A fresh draw evaluated and exported
another model than the one trained (engine eval's loss 477 where the run measured 204 on the same
images), without a word.
"""

import json

import numpy as np
import pytest
from PIL import Image

NETS = '''
import torch
import torch.nn as nn


class RandomBuffer(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.register_buffer("projection", torch.randn(3 * 8 * 8, 16), persistent=False)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1) @ self.projection)


class RandomAttribute(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.projection = torch.randn(3 * 8 * 8, 16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1) @ self.projection)
'''


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_model_rebuild")
    rng = np.random.default_rng(0)
    for c, name in enumerate(("a", "b")):
        (root / "photos" / name).mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) // 2 + 127 * c
            Image.fromarray(pixels.astype(np.uint8)).save(root / "photos" / name / f"{i}.png")
    (root / "nets.py").write_text(NETS)
    return root


@pytest.mark.parametrize("name", ["RandomBuffer", "RandomAttribute"])
def test_values_drawn_outside_the_state_dict_are_the_runs_in_eval_and_export(folder, tmp_path, name):
    import torch

    from engine.config import Config
    from engine.evaluate import evaluate_checkpoint
    from engine.train import train
    from export.evaluate import evaluate_onnx
    from export.onnx_export import export_onnx

    code = f"{folder / 'nets.py'}:{name}"
    run = tmp_path / "run"
    train(Config(model=code, data=str(folder / "photos"), test_split=0.5, epochs=1, batch_size=5, amp=False,
                 device="cpu", quiet=True, out=str(run), cache_dir=str(tmp_path / "cache")), log=lambda *_: None)
    trained = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["test_loss"]
    torch.manual_seed(123)  # the caller's random state: neither used nor changed by the rebuild
    state = torch.get_rng_state()
    flags = {"amp": False, "device": "cpu", "quiet": True, "cache_dir": str(tmp_path / "cache")}
    evaluated = evaluate_checkpoint(run / "best.pt", flags, log=lambda *_: None, model=code)["test_loss"]
    assert torch.equal(torch.get_rng_state(), state)
    assert evaluated == pytest.approx(trained, rel=1e-4)
    export_onnx(tmp_path / "m.onnx", run / "best.pt", log=lambda *_: None, model=code)
    exported = evaluate_onnx(tmp_path / "m.onnx", {"device": "cpu", "cache_dir": str(tmp_path / "cache")},
                             log=lambda *_: None)["test_loss"]
    assert exported == pytest.approx(trained, rel=1e-4)


@pytest.mark.parametrize("name", ["RandomBuffer", "RandomAttribute"])
def test_a_module_built_in_python_with_values_drawn_outside_its_state_dict_is_told_so(folder, tmp_path, monkeypatch,
                                                                                     name):
    import importlib

    from engine.config import Config
    from engine.errors import UsageError
    from engine.train import train

    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module("nets")
    monkeypatch.delitem(__import__("sys").modules, "nets")
    with pytest.raises(UsageError) as error:
        train(Config(data=str(folder / "photos"), epochs=1, batch_size=5, amp=False, device="cpu", quiet=True,
                     out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache")),
              model=getattr(module, name)(2), log=lambda *_: None)
    assert "keeps projection outside its state dict" in str(error.value)
    assert "constructor argument" not in str(error.value)  # not the line for a lost argument
    assert not (tmp_path / "run").exists()
