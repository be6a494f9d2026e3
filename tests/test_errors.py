"""engine.errors: what a failure says in its one line."""

from engine.errors import first_line


def test_first_line_skips_blank_lines_cuts_long_ones_and_names_empty_errors():
    assert first_line(ValueError("\n  \n  file is truncated  \nTraceback (most recent call last):\n  ...")) == "file is truncated"
    assert first_line(RuntimeError("x" * 500)) == "x" * 200
    assert first_line(RuntimeError("x" * 500), 160) == "x" * 160
    assert first_line(EOFError()) == "EOFError"  # an empty message still says something
