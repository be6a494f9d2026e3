"""The decode cache of an image folder: the 'Not used:' line a run from it says is counted afresh at
each start, since a notes.txt added or removed leaves the decoded images, and so the cache, as they were
(it went stale: said after the file was gone, missing once one was added); a set that must stream into
a cache folder that cannot be made is one line."""

import io

import numpy as np
import pytest
from PIL import Image

from engine.data.imagefolder import read


def png(seed):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def flat(root, per_class=4):
    for c, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            (root / name / f"{k}.png").write_bytes(png(10 * c + k))
    return root


def said(path, cache):
    lines = []
    data = read(path, cache, log=lines.append, test_split="50%")
    return [line for line in lines if line.startswith("Not used:")], lines, data


@pytest.mark.parametrize("memory", ["in memory", "streamed"])
def test_the_not_used_line_follows_the_folders_other_files_from_the_cache(tmp_path, monkeypatch, memory):
    if memory == "streamed":
        monkeypatch.setenv("ENGINE_MEMORY_LIMIT", "1000")  # the file cache (engine.data.filecache)
    path, cache = flat(tmp_path / "photos"), tmp_path / "cache"
    first, _, data = said(path, cache)
    assert first == []
    (path / "a" / "notes.txt").write_text("not an image")
    (path / "b" / "Thumbs.db").write_bytes(b"\0" * 8)
    (path / "b" / ".DS_Store").write_bytes(b"\0" * 8)  # hidden: never said
    unused, lines, again = said(path, cache)
    assert any(line.startswith("Data: ") and "decoded earlier" in line for line in lines), lines  # no decode
    assert unused == [f"Not used: 2 files of {path} that are not an image file this engine reads (.txt 1, .db 1)"]
    (path / "a" / "notes.txt").unlink()
    unused, lines, _ = said(path, cache)
    assert any("decoded earlier" in line for line in lines), lines
    assert unused == [f"Not used: 1 file of {path} that is not an image file this engine reads (.db 1)"]
    (path / "b" / "Thumbs.db").unlink()
    assert said(path, cache)[0] == []
    assert np.array_equal(np.asarray(again.train_x[:]), np.asarray(data.train_x[:]))


def test_a_folders_not_used_line_is_said_once_by_the_decode_and_once_from_the_cache(tmp_path):
    path = flat(tmp_path / "photos")
    (path / "a" / "notes.txt").write_text("not an image")
    (path / "stray.png").write_bytes(png(99))  # outside every class folder: its own note, kept with the cache
    for attempt in ("decode", "cache"):
        unused, lines, _ = said(path, tmp_path / "cache")
        assert unused[0] == f"Not used: 1 file of {path} that is not an image file this engine reads (.txt 1)", (attempt, lines)
        assert len(unused) == 2 and unused[1].startswith("Not used: 1 image outside every class folder"), (attempt, lines)


def test_a_set_that_streams_into_a_cache_folder_that_cannot_be_made_is_one_line(tmp_path, monkeypatch):
    """A set too large for memory is decoded into the file cache, which it cannot do without: a cache
    folder that cannot be made was the OSError's bare words ('/x: Not a directory') from the CLI, and a
    traceback for a Python caller."""
    from engine.errors import EngineError

    monkeypatch.setenv("ENGINE_MEMORY_LIMIT", "1000")
    path = flat(tmp_path / "photos")
    (tmp_path / "taken").write_text("a file where the cache folder's parent would be")
    with pytest.raises(EngineError, match=r"do not fit in memory, so they are decoded into a file cache, and the cache "
                                          r"folder .*taken/cache cannot be made \(Not a directory\); pass --cache-dir"):
        read(path, tmp_path / "taken" / "cache", log=lambda line: None, test_split="50%")


@pytest.mark.parametrize("layout", ["empty class folder", "test classes not train's"])
def test_a_layout_the_decode_would_refuse_is_refused_before_any_image_is_decoded(tmp_path, layout):
    """An empty class folder (or a test/ whose classes are not train/'s) was refused only once every image
    was decoded: minutes for a large folder, and as many again once fixed (the folder, so the key, changed)."""
    from engine.errors import EngineError

    path = tmp_path / "photos"
    if layout == "empty class folder":
        flat(path)
        (path / "c").mkdir()
        expected = "class folder c has no images"
    else:
        flat(path / "train")
        flat(path / "test")
        (path / "test" / "b").rename(path / "test" / "c")
        expected = "test/ has classes that train/ lacks: c"
    next(path.rglob("0.png")).write_bytes(b"")  # what a decode would stop at first
    lines = []
    with pytest.raises(EngineError, match=expected):
        read(path, tmp_path / "cache", log=lines.append, test_split="50%" if layout == "empty class folder" else None)
    assert not any(line.startswith("Decod") for line in lines), lines


@pytest.mark.parametrize("memory", ["in memory", "streamed"])
def test_every_image_that_cannot_be_decoded_is_named_by_one_decode(tmp_path, monkeypatch, memory):
    """A decode stopped at the first image it could not read: a folder with three such images took three
    decodes (each from the start) to name them all."""
    from engine.errors import EngineError

    if memory == "streamed":
        monkeypatch.setenv("ENGINE_MEMORY_LIMIT", "1000")
    path = flat(tmp_path / "photos", per_class=6)
    (path / "a" / "1.png").write_bytes(b"")
    (path / "b" / "2.png").write_bytes(png(1)[:60])  # cut short
    (path / "b" / "fake.jpg").write_text("not an image")
    with pytest.raises(EngineError) as caught:
        read(path, tmp_path / "cache", log=lambda line: None, test_split="50%")
    assert str(caught.value) == (f"cannot decode image {path / 'a' / '1.png'}: the file is empty (0 bytes) (and 2 more "
                                 f"images that cannot be decoded: {path / 'b' / '2.png'}, {path / 'b' / 'fake.jpg'}; "
                                 "remove or replace them)")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # nothing cached


def test_a_file_cache_another_run_completed_meanwhile_is_kept_not_replaced(tmp_path, monkeypatch):
    """Two runs at once on one new set too large for memory both decode it into the file cache: the one
    finishing second removed the first's complete cache, which that run was about to open (None: a
    traceback) or reading. It now keeps it."""
    from engine.data import filecache
    from engine.data.sources import DoesNotFit, check_memory

    monkeypatch.setenv("ENGINE_MEMORY_LIMIT", "1000")
    path, cache = flat(tmp_path / "photos"), tmp_path / "cache"
    read(path, cache, log=lambda line: None, test_split="50%")
    (folder,) = cache.glob("*.stream")
    made, rows = (folder / "images.u8").stat().st_ino, np.asarray(filecache.open_cache(folder)["train_x"][:])
    with pytest.raises(DoesNotFit) as large:  # what the second run found before the first finished
        check_memory(path)
    again = filecache.decode_to_cache(path, folder, large.value.survey, (8, 8), 3, log=lambda line: None)
    assert (folder / "images.u8").stat().st_ino == made  # the first run's file, not a new one
    assert np.array_equal(np.asarray(again["train_x"][:]), rows)
    assert [p.name for p in cache.iterdir()] == [folder.name]  # no temporary left
