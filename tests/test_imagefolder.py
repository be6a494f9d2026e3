"""engine.data.imagefolder: folders and .tar/.tar.gz/.zip archives of real PNG and JPEG files, and the cache."""

import io
import os
import stat
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from engine.data.imagefolder import read, source_key
from engine.errors import EngineError

CLASSES = ["cat", "dog", "frog"]


def png(value, size=(6, 5), mode="RGB"):
    """A PNG whose every pixel is `value` (lossless, so the decoded values can be checked)."""
    buffer = io.BytesIO()
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(np.full(shape, value, dtype=np.uint8), mode).save(buffer, format="PNG")
    return buffer.getvalue()


def tree(counts=(("train", 3), ("test", 2)), **kwargs):
    """{relative path: bytes}: image k of class c in a split is filled with 40 * c + k + (split offset)."""
    files = {}
    for split, n in counts:
        for c, name in enumerate(CLASSES):
            for k in range(n):
                files[f"{split}/{name}/{k:04d}.png"] = png(40 * c + k + (100 if split == "test" else 0), **kwargs)
    return files


def write(files, path, kind):
    if kind == "folder":
        for name, data in files.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in files.items():
                archive.writestr(name, data)
    else:
        with tarfile.open(path, "w:gz" if kind == "tar.gz" else "w") as archive:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def source(tmp_path, files, kind="folder"):
    target = tmp_path / ("images" if kind == "folder" else f"images.{kind}")
    if kind == "folder":
        target.mkdir()
    return write(files, target, kind)


@pytest.mark.parametrize("kind", ["folder", "tar", "tar.gz", "zip"])
def test_reads_every_layout_with_labels_matching_folders(tmp_path, kind):
    path = source(tmp_path, tree(), kind)
    data = read(path, tmp_path / "cache", log=lambda *_: None)
    assert data.classes == CLASSES and data.name == "images"
    assert data.train_x.shape == (9, 3, 5, 6) and data.test_x.shape == (6, 3, 5, 6)
    assert data.train_x.dtype == torch.uint8
    for x, y, offset in ((data.train_x, data.train_y, 0), (data.test_x, data.test_y, 100)):
        values = x[:, 0, 0, 0].long()
        assert torch.equal(y, (values - offset) // 40)  # each image sits under its own class
        assert (x == x[:, :1, :1, :1]).all()  # solid images decode exactly


def test_one_wrapping_folder_and_stray_files_are_allowed(tmp_path):
    files = {f"cifar/{k}": v for k, v in tree().items()}
    files["cifar/README.txt"] = b"not an image"
    files["cifar/train/cat/.DS_Store"] = b"junk"
    files["__MACOSX/cifar/train/cat/._0000.png"] = b"junk"
    data = read(source(tmp_path, files, "zip"), tmp_path / "cache", log=lambda *_: None)
    assert len(data.train_x) == 9


def test_grayscale_images_give_one_channel_and_no_flip(tmp_path):
    data = read(source(tmp_path, tree(mode="L")), tmp_path / "cache", log=lambda *_: None)
    assert data.train_x.shape[1] == 1 and not data.flip


def test_one_colour_image_makes_the_set_rgb_even_after_grey_ones(tmp_path):
    files = tree(mode="L")  # grey first, in the walk's sorted order
    files["train/frog/zzzz.png"] = png(77)  # then one colour image
    data = read(source(tmp_path, files), tmp_path / "cache", log=lambda *_: None)
    assert data.train_x.shape[1] == 3 and data.flip
    grey = data.train_x[0]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])  # grey replicated


def test_symlinked_class_folders_are_followed(tmp_path):
    path = source(tmp_path, tree())
    (path / "train" / "frog").rename(tmp_path / "frogs")
    (path / "train" / "frog").symlink_to(tmp_path / "frogs", target_is_directory=True)
    data = read(path, tmp_path / "cache", log=lambda *_: None)
    assert data.classes == CLASSES and len(data.train_x) == 9


def test_jpeg_is_decoded(tmp_path):
    files = tree()
    buffer = io.BytesIO()
    Image.fromarray(np.full((5, 6, 3), 128, dtype=np.uint8)).save(buffer, format="JPEG", quality=95)
    files["train/cat/extra.jpg"] = buffer.getvalue()
    data = read(source(tmp_path, files), tmp_path / "cache", log=lambda *_: None)
    assert len(data.train_x) == 10
    assert ((data.train_x.float() - 128).abs() < 3).flatten(1).all(1).any()


def test_second_read_comes_from_the_cache_and_a_change_invalidates_it(tmp_path):
    path = source(tmp_path, tree(), "tar.gz")
    messages = []
    first = read(path, tmp_path / "cache", log=messages.append)
    assert any("Decoding" in m for m in messages)
    assert len(list((tmp_path / "cache").glob("images-*.pt"))) == 1
    messages.clear()
    second = read(path, tmp_path / "cache", log=messages.append)
    assert not any("Decoding" in m for m in messages) and any("decoded earlier" in m for m in messages)
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_y, second.test_y)
    key = source_key(path)
    write(tree(counts=(("train", 4), ("test", 2))), path, "tar.gz")
    assert source_key(path) != key
    third = read(path, tmp_path / "cache", log=messages.append)
    assert len(third.train_x) == 12


def test_corrupt_image_is_named(tmp_path):
    files = tree()
    files["train/dog/0001.png"] = files["train/dog/0001.png"][:30]
    for kind in ("folder", "tar.gz"):
        target = tmp_path / kind
        target.mkdir()
        path = source(target, files, kind)
        with pytest.raises(EngineError, match="cannot decode image .*train/dog/0001.png"):
            read(path, tmp_path / "cache", log=lambda *_: None)
    assert not list((tmp_path / "cache").glob("*.pt"))  # nothing half-decoded was cached


@pytest.mark.parametrize("files, message", [
    ({}, "holds no images"),
    ({"train/cat/a.png": png(1), "train/dog/b.png": png(2)}, "--test-split needs at least 2 images of each class, and "
                                                             "class cat has 1; add images of cat, or give the data"),
    ({f"images/{c}/{k}.png": png(k) for c in ("cat", "dog") for k in range(2)},
     "--test-split 10% leaves class cat with no test images \\(it has 2\\)"),
    ({"images/cat/a.png": png(1)}, "has 1 class; a classifier needs at least 2"),
    ({"train/cat/a.png": png(1), "test/cat/b.png": png(2)}, "has 1 class; a classifier needs at least 2"),
    ({"val/cat/a.png": png(1)},
     "no images under train/ \\(it has val/.*\\); to evaluate on val/ alone, give --data .*images/val$"),
    ({"train/cat/a.png": png(1), "train/dog/b.png": png(2), "test/emu/c.png": png(3)}, "test/ has classes that train/ lacks: emu"),
    ({"train/cat/a.png": png(1), "train/dog/b.png": png(2, size=(7, 7)), "test/cat/c.png": png(3),
      "test/dog/d.png": png(4)}, "all images .* share one size"),  # test/ holds train/'s classes: the layout is refused first
])
def test_malformed_folders_say_what_is_wrong(tmp_path, files, message):
    path = source(tmp_path, files)
    with pytest.raises(EngineError, match=message):
        read(path, tmp_path / "cache", log=lambda *_: None)


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_an_archive_of_a_test_set_alone_says_how_to_evaluate_on_it(tmp_path, kind):
    """A folder's own line names --data FOLDER/test; an archive's folder cannot be named so."""
    path = source(tmp_path, {"test/cat/a.png": png(1), "test/dog/b.png": png(2)}, kind)
    with pytest.raises(EngineError, match="no images under train/ \\(it has test/.*\\); to evaluate on test/ alone, "
                                          "extract the archive and give --data its test/ folder$"):
        read(path, tmp_path / "cache", log=lambda *_: None)


def test_missing_or_unsupported_source(tmp_path):
    with pytest.raises(EngineError, match="no such file or directory"):
        read(tmp_path / "absent", tmp_path / "cache")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(EngineError, match="not a directory or a .tar"):
        read(tmp_path / "notes.txt", tmp_path / "cache")


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_truncated_archive_is_named(tmp_path, kind):
    path = source(tmp_path, tree(), kind)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(EngineError, match=f"images.{kind} is not a readable archive"):
        read(path, tmp_path / "cache", log=lambda *_: None)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    files = tree(mode="L")
    buffer = io.BytesIO()
    Image.fromarray(np.full((5, 6), 30000, dtype=np.uint16)).save(buffer, format="PNG")  # mode I;16
    files["train/cat/deep.png"] = buffer.getvalue()
    data = read(source(tmp_path, files), tmp_path / "cache", log=lambda *_: None)
    deep = data.train_x[data.train_y == 0][-1]  # cat's images in name order: 0000..0002, deep
    assert (deep == round(30000 * 255 / 65535)).all()  # 117, where convert("L") gave 255


def huge_png(width, height):
    """PNG bytes whose header claims width x height; only the header is real (decoding would fail)."""
    import struct
    import zlib

    data = bytearray(png(0))
    ihdr = data[12:29]  # b"IHDR" + 13 bytes of header
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


@pytest.mark.parametrize("kind", ["folder", "tar.gz"])
def test_a_huge_image_in_a_folder_is_refused_by_its_header(tmp_path, kind):
    files = tree()
    files["train/dog/zz-huge.png"] = huge_png(20000, 20000)
    with pytest.raises(EngineError, match="zz-huge.png is 20000x20000 pixels, too large to decode safely"):
        read(source(tmp_path, files, kind), tmp_path / "cache", log=lambda *_: None)


def test_a_folder_that_would_fit_neither_in_memory_nor_on_the_cache_disk_is_refused_before_decoding(tmp_path):
    import shutil

    from engine.data.sources import available_memory

    side = 7000  # 49 M pixels: under the per-image limit; 147 MB each as RGB
    # Too large to decode in memory (it would stream from the file cache), and for the disk that cache is on.
    count = int(max(available_memory() / 2, shutil.disk_usage(tmp_path).free) // (3 * side * side)) + 8
    files = {f"{split}/{c}/{k:05d}.png": huge_png(side, side) for split in ("train", "test") for c in ("a", "b")
             for k in range(-(-count // 4))}
    messages = []
    with pytest.raises(EngineError, match="its decoded images need .* GB in the decode cache at .*, and .* GB is free there"):
        read(source(tmp_path, files), tmp_path / "cache", log=messages.append)
    assert not any("Decoding" in m for m in messages)  # refused before a pixel was decoded


def photo(seed, size):
    """A JPEG of smooth random content, (width, height) = size: resizing it must keep its picture."""
    generator = np.random.default_rng(seed)
    small = generator.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize(size, Image.BICUBIC).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_mixed_sizes_need_an_image_size_and_are_fitted_as_predict_fits_them(tmp_path):
    from export.images import batch

    sizes = [(40, 60), (160, 120), (33, 33), (90, 70)]
    files = {f"{split}/{name}/{k}.jpg": photo(k + 10 * c, sizes[(k + c) % 4])
             for split in ("train", "val") for c, name in enumerate(CLASSES) for k in range(4)}
    path = source(tmp_path, files)
    with pytest.raises(EngineError, match=r"images differ in size \(\d+x\d+ .*, \d+x\d+ .*\); .* pass --image-size"):
        read(path, tmp_path / "cache", log=lambda *_: None)
    said = []
    data = read(path, tmp_path / "cache", log=said.append, image_size=(24, 32))
    assert data.train_x.shape == (12, 3, 24, 32) and data.test_x.shape == (12, 3, 24, 32)  # val/ is the test split
    assert any("Decoded 24 images" in line and "img/s" in line for line in said)
    first = sorted(p for p in path.rglob("*.jpg") if p.parts[-3] == "train")[0]  # train/cat/0.jpg, the first image
    served = batch(first, [3, 24, 32])[0]  # what engine predict feeds the model for that file
    assert np.array_equal(np.round(served * 255).astype(np.uint8), data.train_x[0].numpy())
    assert len(list((tmp_path / "cache").glob("*-24x32-stretch.pt"))) == 1  # the cache is keyed by the size too
    cropped = read(path, tmp_path / "cache", log=said.append, image_size=(24, 32), resize="crop")
    assert not torch.equal(cropped.train_x, data.train_x)  # another rule, another cache entry
    assert torch.equal(torch.from_numpy(np.round(batch(first, [3, 24, 32], "crop")[0] * 255).astype(np.uint8)),
                       cropped.train_x[0])
    again = read(path, tmp_path / "cache", log=said.append, image_size=(24, 32))
    assert torch.equal(again.train_x, data.train_x) and "decoded earlier" in said[-1]


@pytest.mark.parametrize("evaluation", ["test", "val", "valid", "validation"])
def test_any_evaluation_split_name_is_the_test_set(tmp_path, evaluation):
    files = {name.replace("test/", f"{evaluation}/"): data for name, data in tree().items()}
    data = read(source(tmp_path, files), tmp_path / "cache", log=lambda *_: None)
    assert len(data.train_x) == 9 and len(data.test_x) == 6


def test_class_folders_without_a_split_hold_out_a_seeded_stratified_test_set(tmp_path):
    files = {f"{name}/{k:03d}.png": png(40 * c + k % 40) for c, name in enumerate(CLASSES) for k in range(10 * (c + 1))}
    path = source(tmp_path, files)
    said = []
    default = read(path, tmp_path / "cache", log=said.append)
    assert any("holding out a seeded, stratified 10%" in line for line in said)
    assert default.test_y.bincount().tolist() == [1, 2, 3] and default.train_y.bincount().tolist() == [9, 18, 27]
    a = read(path, tmp_path / "cache", log=lambda *_: None, test_split="20%", seed=4)
    b = read(path, tmp_path / "cache", log=lambda *_: None, test_split="20%", seed=4)
    c = read(path, tmp_path / "cache", log=lambda *_: None, test_split="20%", seed=5)
    assert torch.equal(a.test_x, b.test_x) and not torch.equal(a.test_x, c.test_x)  # seeded
    assert a.test_y.bincount().tolist() == [2, 4, 6]  # stratified: 20% of each class
    with pytest.raises(EngineError, match="--test-split 5% leaves class cat with no test images"):
        read(path, tmp_path / "cache", log=lambda *_: None, test_split="5%")
    said.clear()
    with pytest.raises(EngineError, match="--test-split is for folders without a test split"):
        read(source(tmp_path / "x", tree()) if (tmp_path / "x").mkdir() is None else None, tmp_path / "cache",
             log=said.append, test_split="10%")
    assert not [line for line in said if line.startswith("Decoding")]  # refused from the names, before decoding


def test_a_split_spelled_two_ways_is_read_together_and_said(tmp_path):
    files = {**tree(), **{name.replace("train/", "TRAIN/").replace(".png", "b.png"): data
                          for name, data in tree().items() if name.startswith("train/")}}
    said = []
    data = read(source(tmp_path, files), tmp_path / "cache", log=said.append)
    assert len(data.train_x) == 18 and any("Reading TRAIN/ and train/ of" in line and "as its train split" in line
                                           for line in said)


def test_an_absolute_member_outside_the_class_folders_is_said_by_its_path(tmp_path):
    said = []
    read(source(tmp_path, {**tree(), "/elsewhere/x.png": png(7)}, "zip"), tmp_path / "cache", log=said.append)
    assert any("Not used: 1 image outside every class folder" in line and "(in elsewhere/)" in line for line in said), said  # read relative, as unzip does


def test_an_empty_class_folder_is_refused_with_a_warm_cache_too_and_notes_do_not_re_decode(tmp_path):
    path = source(tmp_path, tree())
    read(path, tmp_path / "cache", log=lambda *_: None)
    (path / "train" / "notes.txt").write_text("where the photos came from")
    said = []
    read(path, tmp_path / "cache", log=said.append)  # a file that is not an image is not read: the cache holds
    assert any("decoded earlier" in line for line in said) and not any(line.startswith("Decoding") for line in said)
    (path / "train" / "bird").mkdir()
    with pytest.raises(EngineError, match="class folder train/bird has no images"):
        read(path, tmp_path / "cache", log=lambda *_: None)


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_class_folders_holding_splits_of_their_own_are_refused_before_decoding(tmp_path, kind):
    """A folder of datasets (pets/{train,test}/..., flowers/{train,test}/...) read as classes would mix
    each one's training and test images into one class."""
    files = {f"{name}/{path}": data for name in ("pets", "flowers") for path, data in tree().items()}
    said = []
    with pytest.raises(EngineError, match=r"flowers/, pets/ hold train/ and test/ folders of their own, .*give --data "
                                          r"one of them \(e.g. .*flowers\)"):
        read(source(tmp_path, files, kind), tmp_path / "cache", log=said.append)
    assert not [line for line in said if line.startswith("Decoding")]
    alone = {"cat/test/0.png": png(1), "cat/test/1.png": png(2), "dog/0.png": png(3), "dog/1.png": png(4)}
    data = read(source(tmp_path / "b", alone) if (tmp_path / "b").mkdir() is None else None, tmp_path / "cache",
                log=lambda *_: None, test_split="50%")  # a class's subfolder named test/ alone is the class's
    assert data.classes == ["cat", "dog"]
    by_class = {f"{name}/{split}/{k}.png": png(k) for name in ("cat", "dog") for split in ("train", "test") for k in range(2)}
    (tmp_path / "c").mkdir()
    with pytest.raises(EngineError, match=r"cat/, dog/ hold train/ and test/ folders of images, a <class>/<split>/ layout; "
                                          r"put the splits at the top"):
        read(source(tmp_path / "c", by_class, kind), tmp_path / "cache", log=lambda *_: None)


def test_a_set_wrapped_twice_names_the_folder_of_class_folders(tmp_path):
    """outer/inner/{cat,dog}/*: the one class is inner, whose folders are the classes; the line says so."""
    files = {f"outer/inner/{path}": data for path, data in tree((("", 3),)).items()}
    with pytest.raises(EngineError, match=r"has 1 class; .*its one class folder outer/inner/ holds the folders "
                                          r"\w+/, \w+/.*: if those are the classes, give it as --data$"):
        read(source(tmp_path, files), tmp_path / "cache", log=lambda *_: None)


@pytest.mark.parametrize("kind", ["folder", "tar", "zip"])
def test_images_in_a_class_folders_subfolders_belong_to_that_class(tmp_path, kind):
    files = {}
    for c, name in enumerate(CLASSES):  # <class>/<year>/<image>: the years are not classes
        for year in ("2019", "2020"):
            for k in range(5):
                files[f"{name}/{year}/{k}.png"] = png(40 * c + k)
    data = read(source(tmp_path, files, kind), tmp_path / "cache", log=lambda *_: None)
    assert data.classes == CLASSES
    for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
        assert torch.equal(y, x[:, 0, 0, 0].long() // 40)
    nested = tree()  # a split layout, one class's images only in a subfolder of it
    for k in range(3):
        nested[f"train/frog/batch1/{k}.png"] = nested.pop(f"train/frog/{k:04d}.png")
    target = tmp_path / "split"
    target.mkdir()
    data = read(source(target, nested, kind), tmp_path / "cache", log=lambda *_: None)
    assert data.classes == CLASSES and len(data.train_x) == 9
    assert torch.equal(data.train_y, data.train_x[:, 0, 0, 0].long() // 40)


def test_a_class_folder_with_no_image_is_refused_in_archives_and_beside_junk(tmp_path):
    files = tree()
    files["train/emu/.DS_Store"] = b"junk"  # a folder holding only a hidden file has no image
    with pytest.raises(EngineError, match="class folder train/emu has no images"):
        read(source(tmp_path, files), tmp_path / "cache", log=lambda *_: None)
    files["train/gnu/._x.png"] = b"junk"  # the others are named, not counted
    (tmp_path / "two").mkdir()
    with pytest.raises(EngineError, match=r"class folder train/emu has no images \(nor has train/gnu\)"):
        read(source(tmp_path / "two", files), tmp_path / "cache", log=lambda *_: None)
    archive = tmp_path / "empty.tar"
    with tarfile.open(archive, "w") as tar:  # `tar cf x.tar .` of a folder with an empty class folder
        for name, data in tree().items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        folder = tarfile.TarInfo("./train/emu")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
    with pytest.raises(EngineError, match="class folder train/emu has no images"):
        read(archive, tmp_path / "cache", log=lambda *_: None)
    for kind in ("zip", "tar"):  # archives made without folder entries (zip -D, a tar of files): the same line
        (tmp_path / kind).mkdir()
        junk = {**tree(), "train/emu/.DS_Store": b"junk", "train/emu/notes.txt": b"junk"}
        with pytest.raises(EngineError, match="class folder train/emu has no images"):
            read(source(tmp_path / kind, junk, kind), tmp_path / "cache", log=lambda *_: None)


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_one_class_with_subfolders_beside_an_empty_one_is_not_read_as_a_wrapper(tmp_path, kind):
    """cat/2019/*, cat/2020/* beside an empty dog/: two classes, one without images (one line), not the
    classes 2019 and 2020 of a wrapping folder cat/."""
    files = {f"cat/{year}/{k}.png": png(40 * c + k) for c, year in enumerate(("2019", "2020")) for k in range(10)}
    files["dog/.DS_Store"] = b"junk"
    with pytest.raises(EngineError, match=r"class folder dog has no images; .*\(if cat/ holds the class folders, give it as "
                                          r"--data\)"):
        read(source(tmp_path, files, kind), tmp_path / "cache", log=lambda *_: None)
    files["__MACOSX/cat/._1.png"] = b"junk"  # a hidden folder beside a wrapper leaves it a wrapper
    del files["dog/.DS_Store"]
    (tmp_path / "wrapped").mkdir()
    data = read(source(tmp_path / "wrapped", files, kind), tmp_path / "cache", log=lambda *_: None)
    assert data.classes == ["2019", "2020"]


def sixteen_bit_grey_with_alpha_png(value, size=(6, 5)):
    """A PNG of colour type 4 (grey with alpha) at 16 bits, which PIL cannot write and opens as RGBA."""
    import struct
    import zlib

    width, height = size
    row = b"\x00" + np.stack([np.full(width, value, ">u2"), np.full(width, 65535, ">u2")], -1).tobytes()
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 4, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b""))


class Unflagged(zipfile.ZipInfo):
    """A member whose name is stored as UTF-8 bytes without the flag (0x800) that says so, as Info-ZIP's
    zip and macOS's archiver write them (zipfile itself always sets it)."""

    def _encodeFilenameFlags(self):
        return self.filename.encode("utf-8"), self.flag_bits & ~0x800


def test_zip_names_stored_as_utf8_without_the_flag_are_read_as_utf8(tmp_path):
    path = tmp_path / "names.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for c, name in enumerate(("blue 蓝", "grün ü")):
            for k in range(10):
                archive.writestr(Unflagged(f"{name}/{k}.png"), png(40 * c + k))
    with zipfile.ZipFile(path) as archive:  # what zipfile alone makes of these names: cp437
        assert "grün ü/0.png" not in archive.namelist()
    data = read(path, tmp_path / "cache", log=lambda *_: None)
    assert data.classes == ["blue 蓝", "grün ü"]
    assert torch.equal(data.train_y, data.train_x[:, 0, 0, 0].long() // 40)


def test_grey_images_with_alpha_keep_a_grey_set_grey(tmp_path):
    files = tree(mode="L")
    buffer = io.BytesIO()
    Image.fromarray(np.full((5, 6), 90, dtype=np.uint8), "L").convert("LA").save(buffer, format="PNG")
    files["train/cat/alpha.png"] = buffer.getvalue()
    data = read(source(tmp_path, files), tmp_path / "cache", log=lambda *_: None)
    assert data.train_x.shape[1] == 1 and (data.train_x == 90).flatten(1).all(1).any()
    files["train/cat/deep.png"] = sixteen_bit_grey_with_alpha_png(0x5A5A)  # 90 in both bytes
    with Image.open(io.BytesIO(files["train/cat/deep.png"])) as image:
        assert image.mode == "RGBA"  # as PIL opens it
    (tmp_path / "deep").mkdir()
    data = read(source(tmp_path / "deep", files), tmp_path / "cache", log=lambda *_: None)
    assert data.train_x.shape[1] == 1 and (data.train_x == 90).flatten(1).all(1).sum() == 2


def test_an_evaluation_split_must_hold_every_class_train_has(tmp_path):
    files = {k: v for k, v in tree().items() if not k.startswith("test/frog/")}
    with pytest.raises(EngineError, match="test/ lacks classes that train/ has: frog"):
        read(source(tmp_path, files), tmp_path / "cache", log=lambda *_: None)


def test_mixed_sizes_are_refused_by_their_headers_before_the_pixels_are_decoded(tmp_path):
    files = tree()
    big = io.BytesIO()
    Image.fromarray(np.zeros((3000, 3000, 3), dtype=np.uint8)).save(big, format="PNG")
    files["train/frog/big.png"] = big.getvalue()[:200]  # a header that says 3000x3000, and no pixels after it
    with pytest.raises(EngineError, match=r"images differ in size \(5x6 .*, 3000x3000 .*big.png, as HxW\)"):
        read(source(tmp_path, files), tmp_path / "cache", log=lambda *_: None)


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_images_outside_every_class_folder_are_said_not_to_be_used(tmp_path, kind):
    files = tree()
    files["stray.png"] = png(7)
    files["train/cover.png"] = png(8)
    said = []
    data = read(source(tmp_path, files, kind), tmp_path / "cache", log=said.append)
    assert len(data.train_x) == 9 and len(data.test_x) == 6  # the class folders' images only
    assert any(line.startswith("Not used: 2 images outside every class folder of ") and "(in its top folder, train/)" in line
               for line in said), said
    said.clear()
    plain = tmp_path / "plain"
    plain.mkdir()
    read(source(plain, tree(), kind), tmp_path / "cache", log=said.append)
    assert not any(line.startswith("Not used") for line in said)  # nothing outside: nothing said


def test_a_class_named_like_a_split_is_named_in_the_error(tmp_path):
    files = {f"{name}/{k}.png": png(40 * c + k) for c, name in enumerate(("red", "green", "test")) for k in range(3)}
    with pytest.raises(EngineError, match=r"has no images in class folders .*; green/, red/, test/ hold images in no "
                                          r"split's class folder \(is a class named like a split, test/ or val/\? rename it\)"):
        read(source(tmp_path, files), tmp_path / "cache", log=lambda *_: None)


@pytest.mark.parametrize("train, test", [("Train", "Test"), ("TRAIN", "Val"), ("Training", "Testing")])
def test_split_folders_in_any_case_are_splits_not_classes(tmp_path, train, test):
    files = {name.replace("train/", f"{train}/").replace("test/", f"{test}/"): data for name, data in tree().items()}
    data = read(source(tmp_path, files), tmp_path / "cache", log=lambda *_: None)
    assert data.classes == CLASSES  # not ["Test", "Train"], with the test images trained on
    assert data.train_x.shape[0] == 9 and data.test_x.shape[0] == 6
    assert torch.equal(data.test_y, (data.test_x[:, 0, 0, 0].long() - 100) // 40)


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_class_names_in_decomposed_unicode_are_the_composed_ones(tmp_path, kind):
    import unicodedata

    composed, decomposed = "café", unicodedata.normalize("NFD", "café")
    assert composed != decomposed
    files = {f"train/{composed}/a.png": png(1), "train/tea/b.png": png(2), f"test/{decomposed}/c.png": png(3),
             "test/tea/d.png": png(4)}
    data = read(source(tmp_path, files, kind), tmp_path / "cache", log=lambda *_: None)
    assert data.classes == [composed, "tea"] and data.test_y.tolist() == [0, 1]


def test_a_link_loop_or_a_broken_link_is_one_line(tmp_path):
    (tmp_path / "loop").mkdir()
    loop = write(tree(), tmp_path / "loop", "folder")
    (loop / "train" / "cat" / "up").symlink_to("..")
    with pytest.raises(EngineError, match=r"train/cat/up is a link to .*/loop/train, a folder it is inside \(a loop\)"):
        read(loop, tmp_path / "cache", log=lambda *_: None)
    (tmp_path / "broken").mkdir()
    broken = write(tree(), tmp_path / "broken", "folder")
    (broken / "train" / "notes.txt").symlink_to(tmp_path / "nowhere.txt")  # not an image: left out
    assert read(broken, tmp_path / "cache", log=lambda *_: None).classes == CLASSES
    (broken / "train" / "dog" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(EngineError, match=r"train/dog/gone.png is a broken link \(to .*nowhere.png\)"):
        read(broken, tmp_path / "cache", log=lambda *_: None)


def test_links_in_a_tar_read_as_their_targets_as_in_the_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    write(tree(), folder, "folder")
    (folder / "train" / "cat" / "hard.png").hardlink_to(folder / "train" / "cat" / "0000.png")
    (folder / "train" / "cat" / "soft.png").symlink_to("0001.png")
    with tarfile.open(tmp_path / "images.tar", "w") as archive:
        archive.add(folder, arcname="images")
    from_folder = read(folder, tmp_path / "cache", log=lambda *_: None)
    from_tar = read(tmp_path / "images.tar", tmp_path / "cache", log=lambda *_: None)
    assert from_folder.train_x.shape[0] == from_tar.train_x.shape[0] == 11
    assert torch.equal(from_folder.train_x, from_tar.train_x) and torch.equal(from_folder.train_y, from_tar.train_y)


def _zip_link(archive, name, target):
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16  # what `zip -y` stores: the target path, mode "link"
    archive.writestr(info, target)


def zip_with_links(folder, path):
    """`folder` zipped as `zip -ry` does (under its own name): files, and symlinks stored as links."""
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted(folder.rglob("*")):
            name = file.relative_to(folder.parent).as_posix()
            if file.is_symlink():
                _zip_link(archive, name, os.readlink(file))
            elif file.is_file():
                archive.write(file, name)


def test_links_in_a_zip_read_as_their_targets_as_in_the_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    write(tree(), folder, "folder")
    (folder / "train" / "cat" / "soft.png").symlink_to("0001.png")
    (folder / "train" / "dog" / "far.png").symlink_to("../cat/0002.png")
    zip_with_links(folder, tmp_path / "images.zip")
    from_folder = read(folder, tmp_path / "cache", log=lambda *_: None)
    from_zip = read(tmp_path / "images.zip", tmp_path / "cache", log=lambda *_: None)
    assert from_folder.train_x.shape[0] == from_zip.train_x.shape[0] == 11
    assert torch.equal(from_folder.train_x, from_zip.train_x) and torch.equal(from_folder.train_y, from_zip.train_y)
    with zipfile.ZipFile(tmp_path / "broken.zip", "w") as archive:
        for file in sorted(folder.rglob("*.png")):
            if not file.is_symlink():
                archive.write(file, file.relative_to(tmp_path).as_posix())
        _zip_link(archive, "images/train/dog/gone.png", "../cat/nowhere.png")
    with pytest.raises(EngineError, match="gone.png is a link to ../cat/nowhere.png, which the archive does not hold"):
        read(tmp_path / "broken.zip", tmp_path / "cache", log=lambda *_: None)


def test_one_class_of_photos_evaluates_but_does_not_train(tmp_path):
    path = source(tmp_path, {f"cat/{k}.png": png(k) for k in range(3)})
    whole = read(path, tmp_path / "cache", log=lambda *_: None, test_split="all")  # engine eval --data: every image
    assert whole.classes == ["cat"] and whole.test_x.shape[0] == 3 and whole.test_y.tolist() == [0, 0, 0]
    with pytest.raises(EngineError, match="has 1 class; a classifier needs at least 2"):
        read(path, tmp_path / "cache", log=lambda *_: None)  # the cached decode, read for training


@pytest.mark.parametrize("files", [{f"cat/{k}.png": png(k) for k in range(3)},
                                   {"train/cat/a.png": png(1), "train/cat/b.png": png(2), "test/cat/c.png": png(3)}])
def test_one_class_to_train_on_is_refused_before_any_image_is_decoded(tmp_path, files):
    said = []
    with pytest.raises(EngineError, match="has 1 class; a classifier needs at least 2"):
        read(source(tmp_path, files), tmp_path / "cache", log=said.append)
    assert not any(line.startswith(("Decoding", "Decoded")) for line in said), said
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("kind", ["folder", "zip"])
@pytest.mark.parametrize("test_split", [None, "all"])
def test_loose_images_without_class_folders_are_refused_before_any_image_is_decoded(tmp_path, kind, test_split):
    said = []
    with pytest.raises(EngineError, match=r"has no images in class folders .*; its top folder holds images outside every class folder"):
        read(source(tmp_path, {f"{k}.png": png(k) for k in range(4)}, kind), tmp_path / "cache", log=said.append,
             test_split=test_split)
    assert not any(line.startswith(("Decoding", "Decoded")) for line in said), said
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_a_link_loop_or_a_link_to_a_folder_inside_an_archive_is_one_line(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    write(tree(), folder, "folder")
    (folder / "train" / "cat" / "a.png").symlink_to("b.png")
    (folder / "train" / "cat" / "b.png").symlink_to("a.png")
    with tarfile.open(tmp_path / "loop.tar", "w") as archive:
        archive.add(folder, arcname="images")
    with pytest.raises(EngineError, match=r"loop.tar:images/train/cat/\w.png is a link in a loop"):
        read(tmp_path / "loop.tar", tmp_path / "cache", log=lambda *_: None)
    for name in ("a.png", "b.png"):
        (folder / "train" / "cat" / name).unlink()
    (folder / "train" / "cat" / "dir.png").symlink_to("../dog")
    with tarfile.open(tmp_path / "dir.tar", "w") as archive:
        archive.add(folder, arcname="images")
    with pytest.raises(EngineError, match=r"dir.png is a link to ../dog, which is not a file"):
        read(tmp_path / "dir.tar", tmp_path / "cache", log=lambda *_: None)
    zip_with_links(folder, tmp_path / "dir.zip")
    with pytest.raises(EngineError, match=r"dir.png is a link to ../dog, a folder; a link inside a zip is followed only"):
        read(tmp_path / "dir.zip", tmp_path / "cache", log=lambda *_: None)


def test_files_swapped_between_classes_with_their_size_and_mtime_are_decoded_again(tmp_path):
    folder = tmp_path / "swap"
    for label, colour in (("cat", (250, 0, 0)), ("dog", (0, 0, 250))):
        (folder / label).mkdir(parents=True)
        for k in range(4):
            Image.new("RGB", (8, 8), colour).save(folder / label / f"{k}.bmp")  # every BMP the same size
    for file in folder.rglob("*.bmp"):
        os.utime(file, ns=(10**18, 10**18))  # one mtime, as `tar x` or `cp -p` leave them
    before = read(folder, tmp_path / "cache", log=lambda *_: None, test_split="all")
    for k in range(4):
        (folder / "cat" / f"{k}.bmp").rename(folder / "t.bmp")
        (folder / "dog" / f"{k}.bmp").rename(folder / "cat" / f"{k}.bmp")
        (folder / "t.bmp").rename(folder / "dog" / f"{k}.bmp")
    said = []
    after = read(folder, tmp_path / "cache", log=said.append, test_split="all")
    assert any(line.startswith("Decoding") for line in said)  # not the stale cache
    assert torch.equal(after.test_x[after.test_y == 0], before.test_x[before.test_y == 1])


def test_zips_from_windows_and_with_absolute_names_keep_their_class_folders(tmp_path):
    """.NET's ZipFile and PowerShell's Compress-Archive separate folders with '\\' (made on Windows:
    create_system 0), and some archivers keep a leading '/': unzip reads both as folders."""
    for kind, name_of in (("windows", lambda name: name.replace("/", "\\")), ("absolute", lambda name: "/data/" + name)):
        path = tmp_path / f"{kind}.zip"
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in tree().items():
                info = zipfile.ZipInfo(name_of(name))
                info.create_system = 0 if kind == "windows" else 3
                archive.writestr(info, data)
        data = read(path, tmp_path / "cache", log=lambda *_: None)
        assert data.classes == CLASSES and len(data.train_x) == 9 and len(data.test_x) == 6, kind


def patched_zip(path, local, central, value):
    """`path` (a zip) with a 2-byte field at offset `local` of every local header and `central` of every
    central directory entry set to `value`: its compression method, or its flags."""
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", local), (b"PK\x01\x02", central)):
        at = data.find(signature)
        while at >= 0:
            data[at + offset:at + offset + 2] = value.to_bytes(2, "little")
            at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("field, value, message", [
    ((8, 10), 9, "is compressed with a method Python's zipfile cannot read \\(Deflate64"),  # Windows Explorer's
    ((8, 10), 98, "is compressed with a method Python's zipfile cannot read \\(PPMd\\)"),
    ((6, 8), 1, "is encrypted \\(password-protected\\)")])
def test_zips_python_cannot_read_are_one_line_naming_the_member(tmp_path, field, value, message):
    path = write(tree(), tmp_path / "images.zip", "zip")
    patched_zip(path, *field, value)
    with pytest.raises(EngineError, match=message):
        read(path, tmp_path / "cache", log=lambda *_: None)


def test_what_a_source_leaves_out_is_said_from_the_decode_cache_too(tmp_path):
    """A val/ not used and files that are not images were said on the first decode only: a run from
    the cache left the same images out without a word. .tga is read as an image (PIL decodes it;
    it was skipped silently, while predict took it)."""
    files = tree(counts=(("train", 3), ("test", 2), ("val", 2)))
    buffer = io.BytesIO()
    Image.fromarray(np.full((5, 6, 3), 7, dtype=np.uint8)).save(buffer, format="TGA")
    files["train/cat/extra.tga"] = buffer.getvalue()
    files["train/cat/notes.txt"] = b"not an image"
    files["train/dog/.DS_Store"] = b"hidden: not said"
    path = source(tmp_path, files)
    for run in range(2):
        lines = []
        data = read(path, tmp_path / "cache", log=lines.append)
        assert len(data.train_x) == 10, run  # 3 a class and the .tga
        assert f"Not used: 1 file of {path} that is not an image file this engine reads (.txt 1)" in lines, (run, lines)
        assert any(line.startswith("Using test/ as the test split; val/ not used") for line in lines), (run, lines)
    assert any(line.startswith("Data: ") and "decoded earlier" in line for line in lines)  # the second read: the cache


def test_archive_members_naming_a_place_outside_it_are_counted_not_dropped_silently(tmp_path):
    path = write({**tree(), "../evil.png": png(1), "train/../../up.png": png(2)}, tmp_path / "images.zip", "zip")
    said = []
    data = read(path, tmp_path / "cache", log=said.append)
    assert len(data.train_x) == 9  # nothing outside the archive's folders is read
    assert f"Not used: 2 files of {path} that are not an image file this engine reads ('..' in the name 2)" in said, said


def test_messages_name_split_folders_as_the_source_spells_them(tmp_path):
    files = {name.replace("train/", "Train/").replace("test/", "TEST/"): data for name, data in tree().items()}
    for k in range(2):
        files[f"Val/cat/{k}.png"] = png(k)
    said = []
    read(source(tmp_path, files), tmp_path / "cache", log=said.append)
    assert "Using TEST/ as the test split; Val/ not used (--val-split holds out validation images from Train/)" in said
    files = {k: v for k, v in files.items() if not k.startswith("TEST/frog/")}
    (tmp_path / "other").mkdir()
    with pytest.raises(EngineError, match="TEST/ lacks classes that Train/ has: frog"):
        read(write(files, tmp_path / "other", "folder"), tmp_path / "cache", log=lambda *_: None)


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
@pytest.mark.parametrize("memory", [None, "1000"])  # decoded in memory, and into the file cache
def test_an_image_name_an_archive_holds_twice_is_one_image_its_last_member(tmp_path, monkeypatch, kind, memory):
    """`zip` run twice, zipfile.writestr of a name again, `tar -r`: extracting keeps the last member of a
    name, so it is read once, as its last member, and said in one line; both read would count one file
    twice and label under one name pixels the user's extracted folder does not hold."""
    import warnings

    if memory:
        monkeypatch.setenv("ENGINE_MEMORY_LIMIT", memory)
    files = tree()
    target = tmp_path / f"images.{kind}"
    write(files, target, kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile's "Duplicate name" warning
        if kind == "zip":
            with zipfile.ZipFile(target, "a") as archive:
                archive.writestr("train/cat/0001.png", png(222))
                archive.writestr("./train/dog/0000.png", png(233))  # extracts to train/dog/0000.png too
        else:  # a gzipped tar cannot be appended to: written again with the names at the end
            with tarfile.open(target, "w:gz") as archive:
                for name, data in [*files.items(), ("train/cat/0001.png", png(222)), ("./train/dog/0000.png", png(233))]:
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
    said = []
    data = read(target, tmp_path / "cache", said.append)
    assert (len(data.train_x), len(data.test_x)) == (9, 6)  # 3 classes x 3 and x 2, as extracted
    cat, dog = data.train_x[data.train_y == 0], data.train_x[data.train_y == 1]
    assert cat[:, 0, 0, 0].tolist() == [0, 222, 2] and dog[:, 0, 0, 0].tolist() == [233, 41, 42]
    line = (f"Not used: 2 earlier members of {target} under an image name it holds more than once (train/cat/0001.png, "
            "train/dog/0000.png); the last member of each name is read, as extracting the archive keeps it")
    assert line in said
    said.clear()
    again = read(target, tmp_path / "cache", said.append)  # from the decode cache: said again
    every = torch.arange(9)
    assert line in said and torch.equal(again.train_x[every], data.train_x[every])


@pytest.mark.parametrize("kind", ["folder", "wrapped", "tar", "stream"])
def test_an_empty_test_folder_beside_train_is_named_where_a_test_set_is_held_out(tmp_path, monkeypatch, kind):
    """An empty test/ (a copy that failed, images not yet added) leaves the set with no test split: the
    line that holds 10% of train/ out instead names that folder, from the decode cache too."""
    files = tree(counts=(("train", 10),))
    prefix = "photos/" if kind == "wrapped" else ""
    files = {prefix + name: data for name, data in files.items()}
    if kind == "stream":
        monkeypatch.setenv("ENGINE_MEMORY_LIMIT", "1000")  # decoded into the file cache
    if kind == "tar":
        target = write(files, tmp_path / "images.tar", "tar")
        with tarfile.open(target, "a") as archive:
            folder = tarfile.TarInfo("Test")  # a folder entry, spelled as the user did
            folder.type = tarfile.DIRTYPE
            archive.addfile(folder)
        empty = "Test"
    else:
        target = source(tmp_path, files)
        (target / prefix / "test").mkdir()
        (target / prefix / "test" / ".DS_Store").write_bytes(b"")  # hidden: still no images
        empty = f"{prefix}test"
    line = (f"{target}: {empty}/ has no images, so there is no test split: holding out a seeded, stratified 10% of "
            f"each class (3 images) as the test set (--test-split P% to choose; or put test images in {empty}/<class>/)")
    for _ in range(2):  # decoded, then from the decode cache
        said = []
        data = read(target, tmp_path / "cache", said.append)
        assert line in said and (len(data.train_x), len(data.test_x)) == (27, 3)
    said = []
    read(target, tmp_path / "cache", said.append, test_split="25%")  # asked for: nothing to say
    assert not any("has no images" in text for text in said)


def test_a_folder_without_a_test_folder_says_it_has_no_test_split(tmp_path):
    said = []
    read(source(tmp_path, tree(counts=(("train", 10),))), tmp_path / "cache", said.append)
    assert any(text.endswith("images has no test split: holding out a seeded, stratified 10% of each class (3 images) "
                             "as the test set (--test-split P% to choose)") for text in said), said


@pytest.mark.parametrize("kind", ["pipe", "device link"])
def test_an_image_name_on_a_pipe_or_a_device_is_one_line_not_a_read_that_never_ends(tmp_path, kind):
    """A FIFO named cat/x.png blocked the decode forever; a link to /dev/zero read until memory ran out."""
    import signal

    folder = source(tmp_path, tree(counts=(("train", 2), ("test", 1))))
    odd = folder / "train" / "cat" / "x.png"
    if kind == "pipe":
        os.mkfifo(odd)
    else:
        odd.symlink_to("/dev/null")  # as /dev/zero, which is not read here should this regress
    os.mkfifo(folder / "train" / "cat" / "notes.txt")  # not an image name: never read, no matter what it is

    def stuck(*_):
        raise TimeoutError("the read never ended")

    previous = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(20)
    try:
        with pytest.raises(EngineError) as error:
            read(folder, tmp_path / "cache", lambda *_: None)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    link = "a link to /dev/null, " if kind == "device link" else ""
    assert str(error.value) == f"{odd} is not a regular file ({link}a pipe, socket or device), not an image; remove it"


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_an_empty_test_folder_beside_class_folders_is_named_as_a_split_not_a_class(tmp_path, kind):
    """cat/, dog/, frog/ and an empty test/: the line called test/ a class folder with no images."""
    files = {name.split("/", 1)[1]: data for name, data in tree(counts=(("train", 3),)).items()}
    if kind == "zip":
        files["test/"] = b""  # a folder entry
        target = write(files, tmp_path / "images.zip", "zip")
    else:
        target = source(tmp_path, files)
        (target / "test").mkdir()
    with pytest.raises(EngineError) as error:
        read(target, tmp_path / "cache", lambda *_: None)
    assert str(error.value) == (f"{target}: test/ has no images, and beside class folders a split folder is no class: "
                                "remove it (a --test-split of each class is then held out), or move the class folders "
                                "into train/ and put test images in test/<class>/")


def test_an_archive_whose_first_image_is_held_twice_checks_sizes_against_its_last_member(tmp_path):
    """The one-size check took the first member's size: an earlier copy of another size, which
    extracting the archive overwrites, refused a set whose images all share one size."""
    import warnings

    target = write({"train/cat/0000.png": png(5, size=(9, 9))}, tmp_path / "images.zip", "zip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile's "Duplicate name" warning
        with zipfile.ZipFile(target, "a") as archive:
            for name, data in tree().items():
                archive.writestr(name, data)
    data = read(target, tmp_path / "cache", lambda *_: None)
    assert tuple(data.train_x.shape) == (9, 3, 5, 6) and data.train_x[0, 0, 0, 0] == 0  # the last member's pixels


@pytest.mark.parametrize("kind", ["folder", "tar.gz"])
def test_a_source_whose_images_are_all_hidden_says_so_not_that_it_holds_none(tmp_path, kind):
    """A set inside a hidden folder (.data/cat/1.png: a tar of a dot-folder) was 'holds no images'."""
    files = {f".data/{name}": data for name, data in tree().items()}
    target = source(tmp_path, files, kind)
    with pytest.raises(EngineError) as error:
        read(target, tmp_path / "cache", lambda *_: None)
    assert str(error.value) == (f"{target} holds no images outside hidden files and folders: its 15 image files are "
                                "under names starting with '.' or in __MACOSX/, which are skipped (e.g. "
                                f".data/{'test/cat/0000.png' if kind == 'folder' else 'train/cat/0000.png'}); rename "
                                "the folder that hides them")
    (tmp_path / "n").mkdir()
    with pytest.raises(EngineError, match=r"images holds no images \(files ending \.apng, .*\)$"):
        read(source(tmp_path / "n", {"notes.txt": b"x"}), tmp_path / "cache", lambda *_: None)


def test_a_test_class_that_differs_from_trains_only_in_case_is_shown_so(tmp_path):
    files = tree()
    files = {name.replace("test/cat/", "test/Cat/"): data for name, data in files.items()}
    with pytest.raises(EngineError, match=r"test/ has classes that train/ lacks: Cat \(train/ has 'cat'\) \(the "):
        read(source(tmp_path, files), tmp_path / "cache", lambda *_: None)
