"""`engine train --out LINK` where LINK is a symlink to a folder that does not exist (a `runs/latest`
whose run was deleted): "cannot write to --out runs/latest: File exists", which named nothing that
exists. Now the line says it is a broken link, and where it points."""

import os

import pytest

from engine.config import Config
from engine.errors import EngineError
from engine.train import train


def test_an_out_that_is_a_broken_link_is_said_so(tmp_path):
    link = tmp_path / "latest"
    os.symlink("gone", link)
    with pytest.raises(EngineError, match=r"--out .*latest is a link to gone, which does not exist"):
        train(Config(epochs=1, limit_train=16, limit_test=8, batch_size=8, device="cpu", amp=False, out=str(link)),
              log=lambda *_: None)
    assert os.readlink(link) == "gone" and not (tmp_path / "gone").exists()


def test_an_out_under_a_file_names_the_file(tmp_path):
    """`runs` a file (and the default run directory under it), or --out a/b with a a file: the line said only
    "Not a directory"; it names the file in the way."""
    (tmp_path / "runs").write_text("")
    with pytest.raises(EngineError, match=r"runs is a file, not a folder; choose another --out"):
        train(Config(epochs=1, limit_train=16, limit_test=8, batch_size=8, device="cpu", amp=False,
                     out=str(tmp_path / "runs" / "a" / "b")), log=lambda *_: None)
    assert (tmp_path / "runs").read_text() == ""
