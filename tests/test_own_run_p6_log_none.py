"""`train(cfg, log=None)` (and evaluate_checkpoint, evaluate_onnx, export_onnx), a caller's way of
asking for silence, failed deep inside with "TypeError: 'NoneType' object is not callable" after
the work had started; now log=None is silent and the work is done."""

import pytest

from engine.config import Config
from engine.evaluate import evaluate_checkpoint
from engine.train import train
from export.evaluate import evaluate_onnx
from export.onnx_export import export_onnx


@pytest.mark.slow
def test_train_with_log_none_trains_silently(tmp_path, capsys):
    run, metrics = train(Config(epochs=1, limit_train=32, limit_test=16, batch_size=16, amp=False, device="cpu",
                                out=str(tmp_path / "run")), log=None)
    assert len(metrics) == 1 and (run / "last.pt").is_file()
    assert capsys.readouterr().out == ""


@pytest.mark.slow
def test_evaluations_and_export_with_log_none_are_silent(tiny_run, tiny_onnx, tmp_path, capsys):
    result = evaluate_checkpoint(tiny_run[1], {"limit_test": 32}, log=None)
    assert result["images"] == 32
    assert evaluate_onnx(tiny_onnx, {"limit_test": 32}, log=None)["images"] == 32
    exported = export_onnx(tmp_path / "m.onnx", tiny_run[1], log=None)
    assert exported.path.is_file()
    assert capsys.readouterr().out == ""


@pytest.mark.slow
def test_resume_config_with_say_none_is_silent_even_where_it_has_something_to_say(tmp_path, capsys):
    """resume_config(RUN, {"data": NEW_PATH}, say=None) for a run whose image folder moved says a Data line."""
    import shutil

    import numpy as np
    from PIL import Image

    from engine.resume import resume_config

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("a", "b"):
            (tmp_path / "imgs" / split / name).mkdir(parents=True)
            for i in range(8):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / "imgs" / split / name / f"{i}.png")
    run = tmp_path / "run"
    train(Config(data=str(tmp_path / "imgs"), model="mlp", epochs=1, batch_size=8, crop_padding=0, amp=False,
                 device="cpu", cache_dir=str(tmp_path / "cache"), out=str(run)), log=None)
    shutil.move(tmp_path / "imgs", tmp_path / "moved")
    capsys.readouterr()
    cfg, _ = resume_config(run, {"data": str(tmp_path / "moved")}, say=None)
    assert cfg.data == str(tmp_path / "moved") and capsys.readouterr().out == ""
