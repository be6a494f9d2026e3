"""engine export OUT.onnx --int8 whose quantization fails: it had already moved the new OUT.onnx into place, so
an earlier export's OUT.int8.onnx stayed beside a fp32 file it no longer matched. Now both files are staged and
placed only when both are written and measured: a failed retry leaves the earlier pair as it was.
And engine export onto a symbolic link replaced the link with a regular file: it now writes through the link
to its target (atomically there), as cp and editors do."""

import os

import onnx
import pytest

from engine.cli import main
from export.onnx_export import export_onnx, int8_path


def failing_quantizer(monkeypatch):
    """onnxruntime's quantizer failing (as it does on a graph it cannot calibrate): a dependency, not export."""
    import onnxruntime.quantization as quantization

    def quantize_static(*args, **kwargs):
        raise RuntimeError("calibration found no range for tensor x")

    monkeypatch.setattr(quantization, "quantize_static", quantize_static)


@pytest.mark.slow
def test_a_failed_int8_retry_leaves_the_earlier_pair_as_it_was(tiny_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an earlier fp32 export")
    int8_path(out).write_bytes(b"its int8 file")
    failing_quantizer(monkeypatch)
    assert main(["export", str(out), "--checkpoint", str(tiny_run[1]), "--int8"]) == 1
    said = capsys.readouterr()
    assert "int8 quantization failed: calibration found no range for tensor x" in said.err
    assert "Traceback" not in said.err and len(said.err.strip().splitlines()) == 1
    assert f"Wrote {out}" not in said.out  # nothing said written that is not
    assert out.read_bytes() == b"an earlier fp32 export"
    assert int8_path(out).read_bytes() == b"its int8 file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx", "model.onnx"]  # no temporaries


@pytest.mark.slow
def test_export_writes_through_a_symbolic_link_to_its_target(tiny_run, tmp_path):
    target = tmp_path / "models" / "current.onnx"
    target.parent.mkdir()
    target.write_bytes(b"an earlier export")
    link = tmp_path / "model.onnx"
    link.symlink_to(os.path.relpath(target, tmp_path))
    result = export_onnx(link, tiny_run[1], verify=False, log=None)
    assert link.is_symlink() and os.readlink(link) == os.path.relpath(target, tmp_path)  # the link is kept
    assert result.path == link
    onnx.checker.check_model(str(target), full_check=True)  # the new file is the link's target
    assert sorted(p.name for p in target.parent.iterdir()) == ["current.onnx"]  # no temporaries left there


@pytest.mark.slow
def test_export_through_a_dangling_link_creates_its_target(tiny_run, tmp_path):
    link = tmp_path / "model.onnx"
    link.symlink_to(tmp_path / "new.onnx")
    export_onnx(link, tiny_run[1], verify=False, log=None)
    assert link.is_symlink() and (tmp_path / "new.onnx").is_file()


def test_a_link_into_a_missing_folder_or_a_loop_is_one_line(tiny_run, tmp_path, capsys):
    missing = tmp_path / "a.onnx"
    missing.symlink_to(tmp_path / "gone" / "a.onnx")
    assert main(["export", str(missing), "--checkpoint", str(tiny_run[1]), "--no-verify"]) == 1
    err = capsys.readouterr().err
    assert f"folder {tmp_path / 'gone'} does not exist" in err and "Traceback" not in err
    loop = tmp_path / "loop.onnx"
    loop.symlink_to(loop)
    assert main(["export", str(loop), "--checkpoint", str(tiny_run[1]), "--no-verify"]) == 1
    err = capsys.readouterr().err
    assert "loop" in err and "symbolic link" in err and "Traceback" not in err and loop.is_symlink()


@pytest.mark.slow
def test_a_plain_export_keeps_the_replaced_files_permissions_and_notes_an_earlier_int8_file(tiny_run, tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an earlier, private export")
    out.chmod(0o600)
    int8_path(out).write_bytes(b"an earlier int8 export")
    said = []
    export_onnx(out, tiny_run[1], verify=False, log=said.append)
    assert out.stat().st_mode & 0o777 == 0o600  # was the temporary's 0644
    onnx.checker.check_model(str(out), full_check=True)
    assert said[-1].startswith(f"Note: {int8_path(out)} is an earlier export's int8 file, not this model's")
    assert int8_path(out).read_bytes() == b"an earlier int8 export"  # said, not deleted


def test_an_int8_path_linked_into_a_missing_folder_is_refused_before_the_export(tiny_run, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    int8_path(out).symlink_to(tmp_path / "nowhere" / "x.onnx")  # was 'int8 quantization failed: [Errno 2] ...
    assert main(["export", str(out), "--checkpoint", str(tiny_run[1]), "--int8"]) == 1  # ../..x.onnx.staged1.prep1'
    said = capsys.readouterr()
    assert said.err == f"engine: error: cannot write {int8_path(out)}: folder {tmp_path / 'nowhere'} does not exist\n"
    assert "Exporting" not in said.out and not out.exists()
