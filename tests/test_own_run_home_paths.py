"""`engine train --out=~/...` and `--resume=~/...` name a folder in the home folder, as --data=~/...
does (the shell leaves a ~ after = as it is); --out made a folder named ~ in the current one."""

from engine.cli import main
from tests.test_own_run_out_paths import TRAIN, images  # noqa: F401  the fixture


def test_out_and_resume_expand_the_home_folder(images, tmp_path, capsys, monkeypatch):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("ENGINE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(work)
    assert main([*TRAIN, "--data", str(images), "--out=~/run"]) == 0
    assert (home / "run" / "last.pt").is_file()
    assert not (work / "~").exists()  # not a folder named ~ in the current one
    capsys.readouterr()
    assert main(["train", "--resume=~/run"]) == 0
    assert "Nothing left to train" in capsys.readouterr().out
