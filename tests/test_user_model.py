"""A user's own model end to end, through the real `engine` command: the tutorials' `class Net` in a
file trains, evaluates, exports (verified) and predicts with its code named again; a killed run
resumes bit for bit; `--nproc 2` matches one process; torchvision models train and export; a
module built in Python (`train(cfg, model=...)`) reloads from the command line.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from engine.checkpoint import load

pytestmark = pytest.mark.slow  # subprocesses and whole trainings: in CI (README's test command)

NETS = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    """The tutorials' CIFAR-10 network (cifar_cnn reproduces it): 246,474 parameters."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3)
        self.conv2 = nn.Conv2d(64, 64, 3)
        self.conv3 = nn.Conv2d(64, 128, 3)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(128 * 2 * 2, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = self.pool(F.relu(self.conv3(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


class Small(nn.Module):
    """BatchNorm, a residual add and dropout, with the class count passed by name."""

    def __init__(self, num_classes, in_channels=3, width=16):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width)
        self.body = nn.Conv2d(width, width, 3, padding=1)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        x = F.relu(self.norm(self.stem(x)))
        x = x + F.relu(self.body(x))
        return self.head(self.drop(x.mean((2, 3))))
'''
TINY = ["--limit-train", "256", "--limit-test", "64", "--batch-size", "32", "--no-amp", "--device", "cpu", "--quiet"]
TIMEOUT = 600


def engine(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ENGINE_TEST_PAUSE_AT", None)
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=TIMEOUT)


def ok(result):
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    """nets.py:Net trained for 2 short epochs: (workspace, run directory)."""
    root = tmp_path_factory.mktemp("user")
    (root / "nets.py").write_text(NETS)
    ok(engine("train", "--model", "nets.py:Net", "--epochs", "2", *TINY, "--out", "run", cwd=root))
    return root, root / "run"


def test_a_tutorial_net_in_a_file_trains_evaluates_exports_and_predicts(user_run):
    root, run = user_run
    checkpoint = load(run / "best.pt")
    assert checkpoint.ref.kind == "file" and checkpoint.ref.file == str(root / "nets.py") and checkpoint.ref.name == "Net"
    assert sum(v.numel() for k, v in checkpoint.model.items()) == 246_474
    missing = engine("eval", run / "best.pt", cwd=root)
    assert missing.returncode == 2 and f"name it again: --model {root / 'nets.py'}:Net" in missing.stderr
    printed = ok(engine("eval", run / "best.pt", "--model", "nets.py:Net", "--no-amp", "--limit-test", "64", cwd=root))
    best = max(m["test_acc"] for m in checkpoint.metrics)
    assert float(printed.split("Test_acc:")[1].split("%")[0]) == pytest.approx(best * 100, abs=0.01)
    ok(engine("export", "net.onnx", "--checkpoint", run / "best.pt", "--model", "nets.py:Net", cwd=root))
    onnx_eval = ok(engine("eval", "net.onnx", "--limit-test", "64", cwd=root))
    assert float(onnx_eval.split("Test_acc:")[1].split("%")[0]) == pytest.approx(best * 100, abs=1.6)  # 1 image of 64
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        Image.fromarray(image).save(root / f"{i}.png")
    lines = [json.loads(line) for line in ok(engine("predict", "net.onnx", *[f"{i}.png" for i in range(4)], "--json",
                                                    cwd=root)).splitlines()]
    from engine.checkpoint import model_from_checkpoint
    from engine.models.reference import parse_model
    from engine.normalization import Normalized

    model = Normalized(model_from_checkpoint(checkpoint, code=parse_model(str(root / "nets.py") + ":Net")),
                       checkpoint.spec.mean, checkpoint.spec.std).eval()
    with torch.no_grad():
        top = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).argmax(1).tolist()
    assert [line["top"][0]["class"] for line in lines] == [checkpoint.spec.classes[i] for i in top]


def test_a_user_model_killed_at_three_moments_resumes_to_the_uninterrupted_weights(user_run, tmp_path):
    from tests.test_kill import finish, kill_at, start

    root, reference = user_run
    args = ["--model", str(root / "nets.py") + ":Net", "--epochs", "2", *TINY]
    run = tmp_path / "run"
    for pause, extra in [("step:3", ["--save-every", "0s"]), ("eval:1", []), ("commit:1", [])]:
        resume = ["--resume", str(run), "--model", str(root / "nets.py") + ":Net"] if (run / "last.pt").exists() else []
        kill_at(start(*(resume or [*args, "--out", str(run)]), *extra, pause=pause), pause)
    finish(start("--resume", str(run), "--model", str(root / "nets.py") + ":Net"))
    a, b = load(reference / "last.pt"), load(run / "last.pt")
    assert b.epoch == 2 and a.model.keys() == b.model.keys()
    assert all(torch.equal(v, b.model[k]) for k, v in a.model.items())
    assert [m["test_loss"] for m in a.metrics] == [m["test_loss"] for m in b.metrics]


def test_two_processes_match_one_at_the_same_global_batch(user_run, tmp_path):
    root, _ = user_run
    common = ["--model", "nets.py:Small", "--model-args", '{"width": 8}', "--epochs", "2", "--limit-train", "512",
              "--limit-test", "128", "--no-amp", "--device", "cpu", "--quiet", "--lr", "0.1"]
    ok(engine("train", *common, "--batch-size", "64", "--out", tmp_path / "one", cwd=root))
    ok(engine("train", "--nproc", "2", *common, "--batch-size", "32", "--out", tmp_path / "two", cwd=root))
    one, two = load(tmp_path / "one" / "last.pt"), load(tmp_path / "two" / "last.pt")
    assert two.ref == one.ref and two.ref.args == {"width": 8}
    for a, b in zip(one.metrics, two.metrics):  # SyncBatchNorm and summed gradients: the same arithmetic, reordered
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.02)
        assert b["test_acc"] == pytest.approx(a["test_acc"], abs=0.04)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_models_train_and_export_verified(tmp_path, name):
    ok(engine("train", "--model", f"torchvision:{name}", "--epochs", "1", *TINY, "--out", "run", cwd=tmp_path))
    printed = ok(engine("export", "m.onnx", "--checkpoint", "run/best.pt", cwd=tmp_path))
    assert "top-1 agreement 100.0%" in printed and load(tmp_path / "run" / "best.pt").ref.label == f"torchvision:{name}"


def test_a_module_built_in_python_is_recorded_and_reloads_from_the_command_line(user_run, tmp_path):
    from engine.config import Config
    from engine.models.reference import parse_model
    from engine.models.user_code import load_code
    from engine.train import train

    root, _ = user_run
    Small = load_code(parse_model(str(root / "nets.py") + ":Small"))
    torch.manual_seed(0)
    out, metrics = train(Config(epochs=1, limit_train=128, limit_test=64, batch_size=32, amp=False, device="cpu",
                                quiet=True, out=str(tmp_path / "py")), log=lambda *_: None, model=Small(num_classes=10))
    checkpoint = load(out / "best.pt")
    assert checkpoint.ref.kind == "file" and checkpoint.ref.name == "Small"
    assert checkpoint.config["model"] == f"{root / 'nets.py'}:Small"
    printed = ok(engine("eval", out / "best.pt", "--model", root / "nets.py:Small", "--no-amp", "--limit-test", "64",
                        cwd=tmp_path))
    assert float(printed.split("Test_acc:")[1].split("%")[0]) == pytest.approx(metrics[-1]["test_acc"] * 100, abs=0.01)


def test_init_from_and_freeze_start_a_new_run(user_run, tmp_path):
    root, run = user_run
    ok(engine("train", "--model", "nets.py:Net", "--epochs", "1", *TINY, "--init-from", run / "best.pt",
              "--freeze", "conv1,conv2", "--out", tmp_path / "tuned", cwd=root))
    start, tuned = load(run / "best.pt"), load(tmp_path / "tuned" / "last.pt")
    for key in ("conv1.weight", "conv1.bias", "conv2.weight"):
        assert torch.equal(tuned.model[key], start.model[key]), key  # frozen: unchanged by training
    assert not torch.equal(tuned.model["fc2.weight"], start.model["fc2.weight"])  # the rest trained
    assert {"conv1.weight", "conv2.bias"} <= set(tuned.frozen)


def test_a_user_model_takes_every_training_option(user_run, tmp_path):
    root, _ = user_run
    out = tmp_path / "opts"
    printed = ok(engine("train", "--model", "nets.py:Small", "--model-args", '{"width": 8}', "--epochs", "2",
                        "--limit-train", "512", "--limit-test", "64", "--batch-size", "32", "--device", "cpu",
                        "--amp-dtype", "bf16", "--compile", "--val-split", "64", "--target-acc", "99.9",
                        "--eval-every", "0.5", "--save-every", "0s", "--out", out, cwd=root))
    assert "bf16 autocast" in printed and "torch.compile" in printed and "/ 64 validation /" in printed
    checkpoint = load(out / "best.pt")
    assert checkpoint.best["split"] == "validation"  # best.pt was chosen on the validation images
    epoch_ends = [m["val_acc"] for m in checkpoint.metrics if not m.get("partial")]  # rounded there
    assert checkpoint.best["acc"] == pytest.approx(max(epoch_ends), abs=1e-5)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0.5, 1, 1.5, 2] and all("val_acc" in m for m in metrics)


def test_an_edit_to_a_file_the_model_imports_from_beside_it_is_said_as_one_to_the_model_file_is(tmp_path):
    """`from blocks import Block` in net.py: the checkpoint keeps blocks.py's digest beside net.py's, so
    eval, export and resume with blocks.py edited say so (they used to load it in silence)."""
    (tmp_path / "blocks.py").write_text("import torch.nn as nn\n\n\nclass Block(nn.Sequential):\n    def __init__(self, cin, cout):\n"
                                        "        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))\n")
    (tmp_path / "net.py").write_text("import torch.nn as nn\n\nfrom blocks import Block\n\n\nclass Net(nn.Module):\n"
                                     "    def __init__(self, num_classes):\n        super().__init__()\n"
                                     "        self.body = nn.Sequential(Block(3, 8), Block(8, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten())\n"
                                     "        self.head = nn.Linear(8, num_classes)\n\n"
                                     "    def forward(self, x):\n        return self.head(self.body(x))\n")
    ok(engine("train", "--model", "net.py:Net", "--epochs", "1", *TINY, "--out", "run", cwd=tmp_path))
    ref = load(tmp_path / "run" / "best.pt").ref
    assert set(ref.neighbours) == {"blocks.py"} and len(ref.neighbours["blocks.py"]) == 64
    evaluate = ("eval", tmp_path / "run" / "best.pt", "--model", "net.py:Net", "--limit-test", "64")
    assert "warning" not in engine(*evaluate, cwd=tmp_path).stderr
    blocks = tmp_path / "blocks.py"
    blocks.write_text(blocks.read_text().replace("nn.ReLU()", "nn.Sigmoid()"))
    said = engine(*evaluate, cwd=tmp_path)
    assert said.returncode == 0 and f"{blocks} (imported by net.py) changed since the run was trained" in said.stderr
    exported = engine("export", "net.onnx", "--checkpoint", tmp_path / "run" / "best.pt", "--model", "net.py:Net", cwd=tmp_path)
    assert exported.returncode == 0 and "blocks.py (imported by net.py) changed" in exported.stderr
