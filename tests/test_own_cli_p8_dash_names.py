"""A file whose name starts with - (argparse reads it as an option): engine predict MODEL.onnx -cat.png
said 'the following arguments are required: IMAGE' of an image that was given. It is one line naming
the file and the two ways to give it (./-cat.png, or after --), which work."""

import contextlib
import io
import os

from engine.cli import main


def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_a_dash_named_file_is_named_with_the_ways_to_give_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-cat.png").write_bytes(b"not read")
    code, out, err = run("predict", "model.onnx", "-cat.png")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("engine: error: -cat.png") and "./-cat.png" in err and "--" in err
    assert "required" not in err
    code, _, err = run("summary", "-cat.png")  # any command
    assert code == 2 and "./-cat.png" in err


def test_options_and_words_after_double_dash_are_argparse_s(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-h").write_bytes(b"")  # -h is still help
    code, out, _ = run("predict", "-h")
    assert code == 0 and "usage: engine predict" in out
    (tmp_path / "-cat.png").write_bytes(b"not an image")
    code, _, err = run("predict", "missing.onnx", "--", "-cat.png")  # after --: a file, read as such
    assert code == 1 and "missing.onnx" in err and "./-cat.png" not in err
    assert os.path.exists("-cat.png")
