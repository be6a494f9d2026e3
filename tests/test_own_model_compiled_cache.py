"""`engine eval CHECKPOINT --compile` keeps the package it compiled ahead of time, to load it the next
time instead of compiling again. The package was keyed by the compile key (the run's model label and
args, shapes, precision, CPU, torch) and the checkpoint file's path, size and time, none of which
changes when the user edits the model's forward without changing its weights, or names another file
holding the same class: the next evaluation then ran the forward as it was, after saying the file
had changed and that it loads it only if the weights fit. The package is now keyed by the model's
code too (engine.models.neighbours.of_model).
"""

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.slow  # an AOTInductor C++ build of ~15 s

NET = '''
import torch
import torch.nn as nn

SCALE = {scale}


class Net(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).relu().mean((2, 3))) * SCALE
'''


def test_an_edited_forward_is_not_served_the_package_compiled_from_the_code_before(tmp_path):
    from engine.checkpoint import load, model_from_checkpoint
    from engine.compile_plan import key, record
    from engine.config import Config
    from engine.inference import AOT_KIND, choose_inference, compile_inference, package_file
    from engine.loader import BatchLoader
    from engine.models.reference import parse_model
    from engine.runtime import Runtime
    from engine.train import train

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "photos" / name / f"{i}.png")
    nets, cache = tmp_path / "nets.py", tmp_path / "cache"
    nets.write_text(NET.format(scale=1.0))
    code = f"{nets}:Net"
    run = tmp_path / "run"
    train(Config(model=code, data=str(tmp_path / "photos"), epochs=1, batch_size=4, amp=False, device="cpu",
                 quiet=True, out=str(run), cache_dir=str(cache)), log=lambda *_: None)
    best = run / "best.pt"
    checkpoint = load(best)
    runtime = Runtime.from_config(Config(device="cpu", amp=False, compile=True, channels_last=False))
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    loader = BatchLoader(images, torch.zeros(4, dtype=torch.int64), 4, checkpoint.spec.mean, checkpoint.spec.std,
                         device="cpu", train=False, channels_last=False)
    shape = (4, 3, 8, 8)
    cache_key = key(AOT_KIND, checkpoint.ref, shape, runtime)

    before = model_from_checkpoint(checkpoint, best, parse_model(code), say=lambda *_: None)
    kept = package_file(cache, cache_key, best, before)  # what an earlier `engine eval --compile` kept
    compile_inference(before, shape, runtime, torch.contiguous_format, package_path=kept)
    record(cache, cache_key, 2.0, 10.0, model=checkpoint.ref.label, batch=4, what="inference, AOTInductor")

    nets.write_text(NET.format(scale=3.0))  # the forward edited; the weights, and so the checkpoint, the same
    after = model_from_checkpoint(checkpoint, best, parse_model(code), say=lambda *_: None)
    assert package_file(cache, cache_key, best, after) != kept
    assert package_file(cache, cache_key, best, after) == package_file(cache, cache_key, best, after)
    chosen, _ = choose_inference(after, loader, runtime, checkpoint.ref, best, cache, say=lambda *_: None)
    x = torch.rand(shape)
    with torch.no_grad():
        expected, old = after(x), before(x)
        assert not torch.allclose(expected, old)
        torch.testing.assert_close(chosen(x), expected, rtol=1e-4, atol=1e-5)
