"""`engine eval MODEL.onnx` takes each PyTorch-only flag's off form (what onnxruntime does anyway) and
refuses its on form in one line: --no-channels-last as --no-amp, --no-compile and --no-tta are."""

import pytest

from engine.cli import main


@pytest.mark.slow
def test_the_off_forms_of_pytorch_only_flags_are_taken_for_an_onnx_file(tiny_onnx, capsys):
    for off in ("--no-channels-last", "--no-amp", "--no-compile", "--no-triton", "--no-tta"):
        assert main(["eval", str(tiny_onnx), "--limit-test", "16", "--quiet", off]) == 0, off
        assert "Test_acc:" in capsys.readouterr().out
    assert main(["eval", str(tiny_onnx), "--limit-test", "16", "--channels-last"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["engine: error: --channels-last applies to PyTorch checkpoints; an .onnx file runs in onnxruntime"], err
