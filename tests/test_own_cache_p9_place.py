"""engine.data.filecache._place: a finished streamed decode is renamed into place first; a complete
cache already there (another run's, finished at once, which that run reads) is kept, file for file; an
incomplete leftover is replaced."""

import shutil

from engine.data import filecache, imagefolder
from tests.test_own_cache_p9_stale import _folder


def _streamed(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGINE_MEMORY_LIMIT", "3000")  # streamed: decoded into NAME.stream/
    src, cache = _folder(tmp_path / "photos", n=8, size=(30, 20)), tmp_path / "cache"
    imagefolder.read(src, cache, log=lambda s: None)
    (folder,) = [p for p in cache.iterdir() if p.name.endswith(".stream")]
    return folder


def test_a_complete_cache_in_place_is_kept_and_an_incomplete_one_replaced(tmp_path, monkeypatch):
    folder = _streamed(tmp_path, monkeypatch)
    mine = folder.with_name(f".{folder.name}.tmp1")
    shutil.copytree(folder, mine)
    held = (folder / "images.u8").stat().st_ino  # the file the other run has mapped
    filecache._place(mine, folder)
    assert (folder / "images.u8").stat().st_ino == held and filecache.open_cache(folder) is not None
    with open(folder / "images.u8", "r+b") as f:  # a leftover cut short: not a cache
        f.truncate(10)
    assert filecache.open_cache(folder) is None
    filecache._place(mine, folder)
    assert not mine.exists() and filecache.open_cache(folder) is not None


def test_a_decode_renamed_where_nothing_is(tmp_path, monkeypatch):
    folder = _streamed(tmp_path, monkeypatch)
    mine = folder.with_name(f".{folder.name}.tmp1")
    folder.rename(mine)
    filecache._place(mine, folder)
    assert not mine.exists() and filecache.open_cache(folder)["classes"] == ["cat", "dog"]
