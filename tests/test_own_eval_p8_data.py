"""engine eval of a checkpoint trained on an image folder at --image-size, on --data synthetic (a built-in
set, with its own size): the run's --image-size was carried to the built-in set, which refused it as
'--image-size and --test-split are for image folders', flags the user never gave. The evaluation now
reads the built-in set at its own size and says what differs (its image size and classes)."""

import numpy as np
import pytest
from PIL import Image

from engine.config import Config
from engine.errors import EngineError
from engine.evaluate import evaluate_checkpoint

pytestmark = pytest.mark.slow  # a training run, then the synthetic set generated

NETS = '''
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).relu().mean((2, 3)))
'''


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """(best.pt, the model's code) of a run on a folder of 10x14 images fitted to --image-size 12."""
    from engine.train import train

    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        for name in ("cat", "dog"):
            (root / "photos" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)).save(
                    root / "photos" / split / name / f"{i}.png")
    (root / "nets.py").write_text(NETS)
    code = f"{root / 'nets.py'}:Net"
    train(Config(model=code, data=str(root / "photos"), image_size="12", epochs=1, batch_size=4, amp=False,
                 device="cpu", quiet=True, out=str(root / "run"), cache_dir=str(root / "cache")), log=None)
    return root / "run" / "best.pt", code


def test_a_built_in_set_is_not_given_the_runs_image_size(folder_run):
    best, code = folder_run
    with pytest.raises(EngineError) as caught:
        evaluate_checkpoint(best, {"data": "synthetic", "limit_test": 20, "device": "cpu"}, log=None, model=code)
    message = str(caught.value)
    assert "--image-size" not in message and "--test-split" not in message, message
    assert "3x12x12 images of 2 classes" in message and "synthetic has 3x32x32 images of 10 classes" in message


def test_the_runs_own_folder_still_takes_its_image_size(folder_run):
    best, code = folder_run
    result = evaluate_checkpoint(best, {"device": "cpu", "amp": False}, log=None, model=code)
    assert result["images"] == 4
