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
