"""engine eval --compile keyed its measurements (eager seconds, the compile decision) by the checkpoint's
model reference, the code as it was when the run trained: a model file edited since (another forward,
the same weights) was served the old code's measurement. The key is now the code as it is."""

import json
import textwrap

import pytest

NETS = textwrap.dedent("""
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4, num_classes)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).mean((2, 3)))
""")


@pytest.mark.slow
def test_eval_compiles_measurements_are_keyed_by_the_model_code_as_it_is_now(tmp_path):
    from engine.config import Config
    from engine.evaluate import evaluate_checkpoint
    from engine.train import train

    nets = tmp_path / "nets.py"
    nets.write_text(NETS)
    code, run, cache = f"{nets}:Net", tmp_path / "run", tmp_path / "cache"
    train(Config(model=code, data=photos(tmp_path), test_split=0.5, epochs=1, batch_size=4, amp=False, device="cpu",
                 quiet=True, out=str(run), cache_dir=str(tmp_path / "train-cache")), log=None)
    flags = {"compile": True, "amp": False, "device": "cpu", "quiet": True, "cache_dir": str(cache)}

    def keys():
        return set(json.loads((cache / "compile.json").read_text()))

    evaluate_checkpoint(run / "best.pt", flags, log=None, model=code)
    before = keys()
    evaluate_checkpoint(run / "best.pt", flags, log=None, model=code)
    assert keys() == before  # the same code: measured once
    nets.write_text(NETS.replace("torch.relu", "torch.tanh"))
    evaluate_checkpoint(run / "best.pt", flags, log=None, model=code)
    assert keys() > before  # another forward: measured again, under another key


def photos(root):
    """Two classes of 8 tiny PNG images each: a run on them takes a fraction of the synthetic set's time."""
    from PIL import Image

    for c, name in enumerate(("a", "b")):
        (root / "photos" / name).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (8, 8), (40 * i, 200 * c, 90)).save(root / "photos" / name / f"{i}.png")
    return str(root / "photos")
