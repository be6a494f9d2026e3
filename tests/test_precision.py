"""engine.precision: bf16 autocast kept only where it measures no slower, decided once and cached."""

import json

import pytest
import torch

from engine.config import Config
from engine.session import open_session

QUIET = dict(epochs=1, limit_train=256, limit_test=64, batch_size=32, device="cpu", quiet=True)


def session(tmp_path, name, **kwargs):
    said = []
    s = open_session(Config(**{**QUIET, **kwargs}, cache_dir=str(tmp_path / "cache"), out=str(tmp_path / name)),
                     say=said.append)
    return s, said


@pytest.mark.slow
def test_the_decision_is_measured_once_cached_and_changes_nothing_else(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGINE_CPU_BF16", "1")  # as on a CPU with AMX: the default picks bf16, to be measured
    first, _ = session(tmp_path, "a")
    decisions = json.loads((tmp_path / "cache" / "precision.json").read_text())
    (decision,) = decisions.values()
    assert decision["precision"] == first.runtime.resolved()["precision"] and decision["ratio"] > 0
    decisions[next(iter(decisions))] = dict(decision, precision="fp32", ratio=0.5)  # as if bf16 had lost here
    (tmp_path / "cache" / "precision.json").write_text(json.dumps(decisions))
    second, said = session(tmp_path, "b")
    assert second.runtime.resolved()["precision"] == "fp32"  # the cached decision, not a new measurement
    assert any("Precision: fp32, as bf16 autocast trained cifar_cnn at 0.50x" in line and "measured earlier" in line
               for line in said)
    plain, _ = session(tmp_path, "c", amp=False)  # the measurement touched neither the weights nor the RNG
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), plain.model.state_dict().values()))


def test_forced_bf16_and_no_amp_measure_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGINE_CPU_BF16", "1")
    forced, _ = session(tmp_path, "a", amp_dtype="bf16")
    off, _ = session(tmp_path, "b", amp=False)
    assert forced.runtime.resolved()["precision"] == "bf16" and off.runtime.resolved()["precision"] == "fp32"
    assert not (tmp_path / "cache" / "precision.json").exists()


@pytest.mark.slow
def test_a_resumed_run_keeps_its_own_precision(tmp_path, monkeypatch):
    from engine.checkpoint import load
    from engine.train import train

    monkeypatch.setenv("ENGINE_CPU_BF16", "1")
    cfg = Config(**{**QUIET, "epochs": 2}, cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "run"))
    train(cfg, log=lambda *_: None)
    checkpoint = load(tmp_path / "run" / "last.pt")
    checkpoint.runtime["precision"] = "fp32"  # as if the run had chosen fp32 when it started
    checkpoint.epoch, checkpoint.metrics = 1, checkpoint.metrics[:1]
    said = []
    resumed = open_session(Config.from_dict(checkpoint.config), resume=checkpoint, say=said.append)
    assert resumed.runtime.resolved()["precision"] == "fp32"
    assert "Precision: fp32, as the run chose when it started (its checkpoint's precision)" in said


def test_a_model_that_fails_under_bf16_trains_in_fp32_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGINE_CPU_BF16", "1")
    code = tmp_path / "numpy_net.py"
    code.write_text(
        "import torch\nfrom torch import nn\n\n"
        "class NumpyNet(nn.Module):\n"
        "    def __init__(self, num_classes=10):\n"
        "        super().__init__()\n"
        "        self.head = nn.Linear(3 * 32 * 32, num_classes)\n\n"
        "    def forward(self, x):\n"
        "        logits = self.head(x.flatten(1))\n"
        "        return logits / (float(logits.detach().cpu().numpy().std()) + 1.0)  # numpy has no bf16\n")
    s, said = session(tmp_path, "a", model=f"{code}:NumpyNet")
    assert s.runtime.resolved()["precision"] == "fp32"
    assert any("Precision: fp32, as NumpyNet does not train under bf16 autocast (TypeError" in line for line in said)
    decisions = json.loads((tmp_path / "cache" / "precision.json").read_text())
    assert [d["precision"] for d in decisions.values()] == ["fp32"]
    again, said = session(tmp_path, "b", model=f"{code}:NumpyNet")
    assert again.runtime.resolved()["precision"] == "fp32" and any("found earlier" in line for line in said)


VAR_NET = '''import torch
from torch import nn


class VarNet(nn.Module):
    """Normalises a conv's map by a variance written as E[h^2] - E[h]^2, which bf16 cancels away."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        h = self.conv(x) + 100.0
        mean = h.mean((2, 3), keepdim=True)
        var = (h * h).mean((2, 3), keepdim=True) - mean * mean
        return self.head(((h - mean) / (var.clamp_min(0) + 1e-5).sqrt()).amax((2, 3)))
'''


def test_a_model_whose_loss_bf16_changes_trains_in_fp32_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGINE_CPU_BF16", "1")  # as on a CPU with native bf16: --amp measures bf16
    code = tmp_path / "var_net.py"
    code.write_text(VAR_NET)
    s, said = session(tmp_path, "a", model=f"{code}:VarNet")
    assert s.runtime.resolved()["precision"] == "fp32"
    (line,) = [line for line in said if line.startswith("Precision:")]
    assert "VarNet does not train under bf16 autocast (its loss on the first batch was" in line, line


def test_bf16_agreement_allows_rounding_and_refuses_another_loss():
    from engine.precision import BF16Failed, check_agrees

    check_agrees(2.3026, 2.31)  # bf16's rounding of a conv net's loss
    check_agrees(0.02, 0.05)  # small losses: absolute
    check_agrees(float("nan"), 2.0)  # fp32's own non-finite loss is the run's concern, not bf16's
    for bf16 in (2.6, float("inf"), float("nan")):
        with pytest.raises(BF16Failed):
            check_agrees(2.3026, bf16)
