"""A fresh run never overwrites a file of its --out folder: confusion.png and confusion.json, which a
run writes at its end, are refused up front as config.json or best.pt are."""

import hashlib

import pytest

from engine.cli import main
from tests.test_own_run_out_paths import TRAIN, images  # noqa: F401  the fixture


@pytest.mark.parametrize("name", ["confusion.png", "confusion.json"])
def test_a_users_confusion_file_is_not_overwritten(images, tmp_path, name, capsys, monkeypatch):
    monkeypatch.setenv("ENGINE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "mine"
    out.mkdir()
    (out / name).write_bytes(b"the user's own file")
    code = main([*TRAIN, "--data", str(images), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and f"already holds {name}, which a run would overwrite" in err[0], err
    assert hashlib.sha256((out / name).read_bytes()).digest() == hashlib.sha256(b"the user's own file").digest()
    assert sorted(p.name for p in out.iterdir()) == [name]  # nothing written beside it
