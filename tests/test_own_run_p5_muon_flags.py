"""--muon-lr and --muon-momentum are read by Muon alone: with another optimizer they changed nothing
without a word; the library refuses them in one line (a Python caller's Config too)."""
import subprocess
import sys

import pytest

from engine.config import Config
from engine.errors import UsageError


@pytest.mark.parametrize("given, named", [({"muon_lr": 0.3}, "--muon-lr"),
                                          ({"muon_momentum": 0.8}, "--muon-momentum"),
                                          ({"muon_lr": 0.3, "muon_momentum": 0.8}, "--muon-lr and --muon-momentum")])
def test_muon_settings_with_another_optimizer_are_refused(given, named):
    with pytest.raises(UsageError, match=f"^{named} set the conv filters' Muon step; they apply to --optimizer muon, not adamw"):
        Config(optimizer="adamw", **given)


def test_muon_settings_with_muon_and_defaults_with_sgd_are_taken():
    assert Config(optimizer="muon", muon_lr=0.3, muon_momentum=0.8).muon_lr == 0.3
    assert Config(optimizer="sgd").muon_lr == Config().muon_lr


@pytest.mark.slow
def test_the_cli_says_it_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "engine", "train", "--muon-lr", "0.3", "--epochs", "1",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--muon-lr set the conv filters' Muon step" in lines[0] and "not sgd" in lines[0], done.stderr
    assert not (tmp_path / "run").exists()
