"""engine export OUT.onnx --int8 where OUT.int8.onnx is a directory: refused in one line before anything is
written (it wrote OUT.onnx, calibrated, then failed on the rename: 'int8 quantization failed: [Errno 21]')."""

from engine.cli import main


def test_an_int8_path_that_is_a_directory_is_refused_before_the_export(tiny_run, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    (tmp_path / "model.int8.onnx").mkdir()
    assert main(["export", str(out), "--checkpoint", str(tiny_run[1]), "--int8"]) == 2
    err = capsys.readouterr().err
    assert f"--int8 writes {tmp_path / 'model.int8.onnx'} beside {out}, and that is a directory" in err
    assert not out.exists() and "Traceback" not in err
