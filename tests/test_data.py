"""engine.data: dispatch to the reader `--data` names, `--limit-*`, the spec, and the batch-size check."""

import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import Config
from engine.data import check_batch_size, load_dataset
from engine.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


def test_load_dataset_synthetic_with_limits_and_spec():
    data = load_dataset(Config(limit_train=300, limit_test=50), log=lambda *_: None)
    assert data.train_x.shape == (300, 3, 32, 32) and data.test_x.shape == (50, 3, 32, 32)
    spec = data.spec()
    assert spec.shape == [3, 32, 32] and len(spec.classes) == 10 and spec.flip
    assert all(0 < m < 1 for m in spec.mean) and all(0 < s < 1 for s in spec.std)


def test_a_limit_above_the_set_size_uses_all_and_says_so():
    said = []
    full = load_dataset(Config(), log=lambda *_: None)
    data = load_dataset(Config(limit_train=10**6, limit_test=len(full.test_x)), log=said.append)
    assert len(data.train_x) == len(full.train_x) and len(data.test_x) == len(full.test_x)
    notes = [line for line in said if line.startswith("Note: --limit-")]
    assert notes == [f"Note: --limit-train 1,000,000 is more than the {len(full.train_x):,} training images; all are used"]


def test_batch_larger_than_the_data_is_refused():
    data = load_dataset(Config(limit_train=100, limit_test=10), log=lambda *_: None)
    check_batch_size(data, 100)
    with pytest.raises(UsageError, match="--batch-size 101 is larger than the 100 training images"):
        check_batch_size(data, 101)
    check_batch_size(data, 50, world=2)
    with pytest.raises(UsageError, match=r"--batch-size 51 x 2 processes = 102 is larger than the 100 training images"):
        check_batch_size(data, 51, world=2)  # --nproc 2: an epoch of no step (a traceback at the first batch)


@pytest.mark.slow
def test_the_package_reexports_the_type_and_loads_no_reader_at_import():
    # Readers (and their numpy/PIL/pickle code) load only when their data is asked for.
    code = ("import sys; from engine.data import Dataset, channel_stats, check_batch_size, dataset_label, load_dataset; "
            "print(sorted(m for m in sys.modules if m.startswith('engine.data.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['engine.data.dataset']"


def test_a_folder_named_like_a_built_in_set_is_said_not_to_be_read(tmp_path, monkeypatch):
    """--data synthetic (or cifar10) with a folder of that name in the current directory reads the
    built-in set: a line says the user's folder is not read, and how to name it."""
    (tmp_path / "synthetic" / "cat").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    said = []
    load_dataset(Config(data="synthetic", limit_train=8, limit_test=8), said.append)
    assert ("Note: --data synthetic names the built-in set, not the folder synthetic here, which is not read; give "
            "--data ./synthetic for your own images") in said
    said.clear()
    monkeypatch.chdir(tmp_path / "synthetic")
    load_dataset(Config(data="synthetic", limit_train=8, limit_test=8), said.append)
    assert not any(line.startswith("Note: --data synthetic names") for line in said)
