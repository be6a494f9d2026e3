"""engine.errors: what a failure says in its one line."""

import pytest

from engine.errors import EngineError, first_line


def test_first_line_skips_blank_lines_cuts_long_ones_and_names_empty_errors():
    assert first_line(ValueError("\n  \n  file is truncated  \nTraceback (most recent call last):\n  ...")) == "file is truncated"
    assert first_line(RuntimeError("x" * 500)) == "x" * 200
    assert first_line(RuntimeError("x" * 500), 160) == "x" * 160
    assert first_line(EOFError()) == "EOFError"  # an empty message still says something


def test_test_and_timeout_settings_spelled_as_infinity_are_refused_or_ignored_not_a_traceback(monkeypatch):
    """float('inf') passed the checks, then timedelta() and int() raised OverflowError."""
    from engine.distributed import timeout
    from engine.faults import pause_point
    from engine.memory import memory_limit

    for value in ("inf", "1e999", "1e300"):
        monkeypatch.setenv("ENGINE_DIST_TIMEOUT", value)
        with pytest.raises(EngineError, match="set it to a number of seconds above 0 and below 1e9"):
            timeout()
    monkeypatch.setenv("ENGINE_MEMORY_LIMIT", "inf")
    assert memory_limit() is None  # a test setting: ignored, as other bad values are
    monkeypatch.setenv("ENGINE_TEST_PAUSE_AT", "step:x")
    assert pause_point("step") is None  # a bad count never pauses (it raised ValueError)
