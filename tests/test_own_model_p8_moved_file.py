"""A model file moved (or renamed) after training: `engine eval` said "name the file that defines Net
now: --model FILE.py:Net", and eval did take it, but `engine train --resume RUN --model NEW.py:Net`
(what the line asks for) stopped with "--model /old/nets.py:Net: no such file": train()'s check of the
resumed settings rebuilt the run's saved Config, whose model file is gone. It now resumes."""

import shutil

import pytest

from tests.test_own_model_p8_module_digest import NETS, photos


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
