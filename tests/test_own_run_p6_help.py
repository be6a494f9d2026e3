"""The command's help and the docs agree with its parser: `engine train --help` said "(default: None)"
(Python's word) for --model-args, --init-from and --freeze; every flag of every subcommand is in
README.md or docs/*.md, and every engine flag training.md's table lists is one the CLI takes."""

import argparse
import re
from pathlib import Path

from engine.flags import build_parser

ROOT = Path(__file__).resolve().parent.parent


def subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_no_help_says_python_s_none():
    for name, sub in subcommands().items():
        text = sub.format_help()
        assert "default: None" not in text, name
    assert "(default: none)" in subcommands()["train"].format_help()


def test_every_flag_is_documented_and_every_documented_train_flag_exists():
    taken = {o for sub in subcommands().values() for a in sub._actions for o in a.option_strings} - {"-h", "--help"}
    docs = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    written = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*[a-z0-9])", docs))
    assert sorted(taken - written) == []
    table = [line for line in (ROOT / "docs" / "training.md").read_text().splitlines() if line.startswith("| `--")]
    listed = {flag for line in table for flag in re.findall(r"`(--[a-z][a-z0-9-]*)", line.split("|")[1])}
    train = {o for a in subcommands()["train"]._actions for o in a.option_strings}
    assert len(listed) > 30 and sorted(listed - train) == []
