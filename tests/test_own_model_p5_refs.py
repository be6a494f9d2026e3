"""A user model's checkpoint whose code was moved or deleted since training: what eval, export,
summary and resume say without --model. They said 'name it again: --model /abs/nets.py:Net', a
file that no longer exists, so following the hint failed on 'no such file'.
"""

import pytest

from engine.errors import UsageError
from engine.models.reference import ModelRef, reopen, sha256_of


def test_a_deleted_model_file_is_said_with_what_to_name_instead(tmp_path):
    gone = tmp_path / "nets.py"
    saved = ModelRef("file", "Net", str(gone), "0" * 64)
    with pytest.raises(UsageError) as error:
        reopen(saved, None, source="last.pt")
    message = str(error.value)
    assert "no longer exists" in message and "--model FILE.py:Net" in message
    assert f"--model {gone}" not in message


def test_a_model_file_still_there_is_named_again_as_before(tmp_path):
    here = tmp_path / "nets.py"
    here.write_text("import torch\n")
    saved = ModelRef("file", "Net", str(here), sha256_of(here))
    with pytest.raises(UsageError, match=f"name it again: --model {here}:Net"):
        reopen(saved, None, source="last.pt")
