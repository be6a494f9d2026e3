"""`engine eval --help` said 'images per evaluation batch' of both --batch-size and --eval-batch-size,
not which one an evaluation takes: the help says --eval-batch-size wins where both are given."""

import argparse

from engine.flags import build_parser


def eval_helps():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["eval"]
    return {a.option_strings[0]: a.help for a in sub._actions if a.option_strings}


def test_eval_help_says_which_batch_size_wins():
    helps = eval_helps()
    assert helps["--batch-size"] != helps["--eval-batch-size"]
    assert "--eval-batch-size" in helps["--batch-size"]
    assert "wins over --batch-size" in helps["--eval-batch-size"]
