"""check_disk's refusal when the images fit on the disk but not with the margin left free beside them
said 'need 54.0 MB ... and 0.10 GB is free there; free some space', which contradicts itself: the
line counts the margin in what is needed."""

import shutil

import pytest

from engine.data import filecache
from engine.errors import EngineError
from engine.memory import size_text


def test_the_margin_is_counted_in_the_line(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    need = free - filecache.DISK_MARGIN // 2  # fits alone, not with the margin
    with pytest.raises(EngineError) as caught:
        filecache.check_disk(tmp_path / "photos", tmp_path / "cache", need)
    line = str(caught.value)
    assert size_text(need + filecache.DISK_MARGIN) in line, line
    assert "left free" in line and "\n" not in line
