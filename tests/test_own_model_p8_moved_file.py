"""A model file moved (or renamed) after training: `engine eval` said "name the file that defines Net
now: --model FILE.py:Net", and eval did take it, but `engine train --resume RUN --model NEW.py:Net`
(what the line asks for) stopped with "--model /old/nets.py:Net: no such file": train()'s check of the
resumed settings rebuilt the run's saved Config, whose model file is gone. It now resumes."""

import shutil

import pytest

NETS = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))
"""


@pytest.mark.slow
def test_a_run_whose_model_file_moved_resumes_with_the_file_named_at_its_new_place(tmp_path):
    from engine.checkpoint import load
    from engine.config import Config
    from engine.errors import UsageError
    from engine.resume import resume_config
    from engine.train import train

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "nets.py").write_text(NETS)
    run = tmp_path / "run"
    cfg = Config(model=f"{tmp_path / 'old' / 'nets.py'}:Net", data=photos(tmp_path), test_split=0.5, epochs=1,
                 batch_size=4,
                 amp=False, device="cpu", quiet=True, out=str(run), cache_dir=str(tmp_path / "cache"))
    train(cfg, log=None)
    shutil.move(tmp_path / "old", tmp_path / "new")
    with pytest.raises(UsageError, match="which no longer exists; name the file that defines Net now"):
        resume_config(run, say=None)
    moved = f"{tmp_path / 'new' / 'nets.py'}:Net"
    cfg, checkpoint = resume_config(run, {"model": moved}, say=None)
    said = []
    train(cfg, resume=checkpoint, log=said.append)  # the finished run: the model is rebuilt and loaded all the same
    assert any(line.startswith("Nothing left to train") for line in said)
    assert load(run / "last.pt").epochs_done == 1


def photos(root):
    """Two classes of 8 tiny PNG images each: a run on them takes a fraction of the synthetic set's time."""
    from PIL import Image

    for c, name in enumerate(("a", "b")):
        (root / "photos" / name).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (8, 8), (40 * i, 200 * c, 90)).save(root / "photos" / name / f"{i}.png")
    return str(root / "photos")
