"""A compiling library call quiets torch.utils.cpp_extension's logger (its "No CUDA runtime" line
at import means nothing on CPU); the caller's level for that logger is put back afterwards, as
kept_global_state puts back the generators and settings (it once stayed at ERROR)."""

import logging

import pytest

from engine.inductor import quiet_compiler
from engine.isolation import kept_global_state


@pytest.fixture
def chatty():
    logger = logging.getLogger("torch.utils.cpp_extension")
    before = logger.level
    logger.setLevel(logging.DEBUG)
    yield logger
    logger.setLevel(before)


def test_the_callers_level_comes_back_however_the_call_ends(chatty):
    with kept_global_state():
        quiet_compiler()  # what every compiling path does first
        assert chatty.level == logging.ERROR
    assert chatty.level == logging.DEBUG
    with pytest.raises(RuntimeError), kept_global_state():
        quiet_compiler()
        raise RuntimeError("a failed compile")
    assert chatty.level == logging.DEBUG
