"""A model file written as a script: a top-level `parser.parse_args()` read the engine's own command line
and stopped the import with argparse's usage and 'engine: error: unrecognized arguments: train --model
...' (three lines, the second looking like the engine's refusal of its own flags); one that calls
os.chdir at its top level (or in its constructor) sent the run's relative paths (runs/, --out) to that
folder, unsaid. The code now sees a command line of its own, and the working directory is put back,
said in one line."""

import os
import sys
import textwrap

from engine.models.build import build
from engine.models.reference import parse_model

NET = textwrap.dedent("""
    import argparse
    import os

    import torch
    from torch import nn

    {top}

    class Net(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            {inside}
            self.conv = nn.Conv2d(3, {width}, 3, padding=1)
            self.head = nn.Linear({width}, num_classes)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).mean((2, 3)))
""")


def test_a_scripts_top_level_parse_args_takes_its_defaults_not_the_engines_flags(tmp_path, monkeypatch, capsys):
    path = tmp_path / "script.py"
    top = 'parser = argparse.ArgumentParser()\nparser.add_argument("--width", type=int, default=5)\nARGS = parser.parse_args()'
    path.write_text(NET.format(top=top, inside="", width="ARGS.width"))
    argv = ["engine", "train", "--model", f"{path}:Net", "--epochs", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    model = build(parse_model(f"{path}:Net"), (3, 8, 8), 3)
    assert model.conv.out_channels == 5
    assert sys.argv is argv
    assert "error" not in capsys.readouterr().err


def test_a_working_directory_the_code_changes_is_put_back_and_said(tmp_path, monkeypatch, capsys):
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    for name, top, inside in [("at_import", f"os.chdir({str(tmp_path / 'elsewhere')!r})", ""),
                              ("in_init", "", f"os.chdir({str(tmp_path / 'elsewhere')!r})")]:
        path = tmp_path / f"{name}.py"
        path.write_text(NET.format(top=top, inside=inside, width=4))
        build(parse_model(f"{path}:Net"), (3, 8, 8), 3)
        assert os.getcwd() == str(tmp_path / "here")
    err = capsys.readouterr().err
    assert f"engine: warning: at_import.py changes the working directory to {tmp_path / 'elsewhere'} when imported " in err
    assert f"engine: warning: in_init.py changes the working directory to {tmp_path / 'elsewhere'} when Net is called " in err
    assert err.count(f"(os.chdir); the engine goes back to {tmp_path / 'here'}, where the command's relative paths are") == 2
