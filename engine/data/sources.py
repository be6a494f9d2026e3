"""What an image-folder source holds, before anything is decoded: its files (a directory's, or an
archive's members, read one by one and never extracted), its folders, and a survey of its image
count and first image that decides whether the decode fits in memory (engine.data.imagefolder reads
it; engine.data.filecache decodes what does not fit).
"""

import io
import os
import posixpath
import stat
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from engine.data import layout
from engine.data.dataset import ARCHIVE_SUFFIXES
from engine.errors import EngineError
from engine.pixels import SIXTEEN_BIT, check_size, not_used_line, upright_size

GRAY_MODES = ("L", "LA", "La", "1", "F", *SIXTEEN_BIT)  # LA: grey with alpha, which is dropped as RGBA's is


def grey(image):
    """Whether an opened (not yet decoded) image is grey: by its mode, or a 16-bit grey-with-alpha PNG,
    which PIL opens as RGBA (its tile's raw mode says LA;16B)."""
    if image.mode in GRAY_MODES:
        return True
    return image.format == "PNG" and bool(image.tile) and str(image.tile[0][3]).startswith("LA;16")


def archive_kind(path: Path):
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(ARCHIVE_SUFFIXES):  # .tar, .tar.gz, .tgz
        return "tar"
    return None


def members(path: Path):
    """(name inside the source, bytes) for every file, in the source's own order, and (name, None) for
    every folder the source lists (a directory's, or an archive's folder entries)."""
    kind = archive_kind(path)
    if path.is_dir():
        for root, dirs, files in walk(path):
            for name in dirs:
                yield (Path(root) / name).relative_to(path).as_posix(), None
            for name in files:
                full = Path(root) / name
                yield full.relative_to(path).as_posix(), full.read_bytes
    elif kind == "zip":
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                yield _zip_name(info), None if info.is_dir() else lambda info=info: _zip_read(archive, info, path)
    elif kind == "tar":
        with tarfile.open(path, "r:*") as archive:
            for info in archive:
                if info.isdir():
                    yield info.name, None
                elif info.isfile() or info.islnk() or info.issym():  # a link reads as its target, as in a folder
                    yield info.name, lambda info=info: _tar_read(archive, info, path)
    else:
        raise EngineError(f"{path} is not a directory or a .tar, .tar.gz or .zip archive of an image folder")


def extracted_name(name):
    """The path an archive member extracts to: './a/b', 'a//b' and '/a/b' are all 'a/b' (tar and unzip
    strip a leading '/'), so two members of one such name are one file once extracted."""
    parts = PurePosixPath(name).parts
    return "/".join(parts[1:] if parts[:1] in (("/",), ("//",)) else parts)


def last_copies(entries, copies):
    """`members`' (name, read) pairs less the earlier members of a name an archive holds more than once
    (`copies`: {extracted_name: how many members hold it}, from the Survey): extracting the archive
    overwrites them with the last, so the last is the one read (never both, which would count one
    file twice, and under one name two images that may differ)."""
    seen = {}
    for name, read in entries:
        key = extracted_name(name) if read is not None and copies else None
        if key in copies:
            seen[key] = seen.get(key, 0) + 1
            if seen[key] < copies[key]:
                continue
        yield name, read


def walk(path: Path):
    """os.walk of a directory, links followed, each folder's names sorted; a link loop (a link to a
    folder it sits in) and a broken link to an image are one line each instead of an OSError deep in
    the walk (a broken link to anything else is left out), and so is an image name on a pipe or a
    device (a link to /dev/zero), whose reading would never end."""
    for root, dirs, files in os.walk(path, followlinks=True):
        here = os.path.realpath(root)
        for name in dirs:
            target = os.path.realpath(os.path.join(root, name))
            if here == target or here.startswith(target + os.sep):
                raise EngineError(f"{Path(root, name)} is a link to {target}, a folder it is inside (a loop); "
                                  "remove the link")
        kept = []
        for name in sorted(files):
            full = os.path.join(root, name)
            if os.path.islink(full) and not os.path.exists(full):
                if layout.folder_of(name) is None:
                    continue  # not an image: nothing is read from it either way
                raise EngineError(f"{full} is a broken link (to {os.readlink(full)}); remove it or restore what it "
                                  "points to")
            if not os.path.isfile(full) and layout.folder_of(name) is not None:  # reading one never ends
                link = f"a link to {os.path.realpath(full)}, " if os.path.islink(full) else ""
                raise EngineError(f"{full} is not a regular file ({link}a pipe, socket or device), not an image; "
                                  "remove it")
            kept.append(name)
        dirs.sort()
        yield root, dirs, kept


def _tar_read(archive, info, path):
    """The bytes of a tar member; a link's are its target's, when the target is in the archive."""
    try:
        member = archive.extractfile(info)
    except KeyError:  # tarfile's word for a link whose target is not a member
        raise EngineError(f"{path}:{info.name} is a link to {info.linkname}, which the archive does not hold") from None
    except RecursionError:  # tarfile follows a link to a link by calling itself: a loop never ends
        raise EngineError(f"{path}:{info.name} is a link in a loop (to {info.linkname}); remove the link") from None
    if member is None:  # a link to a folder (or a device): nothing to read as an image
        raise EngineError(f"{path}:{info.name} is a link to {info.linkname}, which is not a file; an image name must "
                          "name an image")
    return member.read()


METHODS = {9: "Deflate64, Windows Explorer's for large zips", 98: "PPMd", 95: "xz", 97: "WavPack", 99: "AES encryption"}


def _zip_read(archive, info, path):
    """The bytes of a zip member; a symlink's (Info-ZIP's `zip -y`: the target path is the member's
    content, its Unix mode says link) are its target's, followed as a folder's or a tar's are."""
    seen = set()
    while stat.S_ISLNK(info.external_attr >> 16):
        seen.add(info.filename)
        link = archive.read(info).decode("utf-8", "replace")
        target = posixpath.normpath(posixpath.join(posixpath.dirname(info.filename), link))
        if target in seen:
            raise EngineError(f"{path}:{info.filename} is a link in a loop (to {link}); remove the link")
        try:
            info = archive.getinfo(target)
        except KeyError:
            folder = any(name.startswith(target + "/") for name in archive.namelist())
            said = "a folder; a link inside a zip is followed only to a file" if folder else "which the archive does not hold"
            raise EngineError(f"{path}:{info.filename} is a link to {link}, {said}") from None
    try:
        return archive.read(info)
    except NotImplementedError:  # Deflate64 (Windows Explorer's for large zips), PPMd, ...: zipfile reads none
        raise EngineError(f"{path}:{info.filename} is compressed with a method Python's zipfile cannot read "
                          f"({METHODS.get(info.compress_type, f'method {info.compress_type}')}); re-zip it with plain "
                          "deflate (zip -r, or Python's shutil.make_archive)") from None
    except RuntimeError:  # zipfile's word for an encrypted member
        if info.flag_bits & 0x1:
            raise EngineError(f"{path}:{info.filename} is encrypted (password-protected); unzip it and pass the "
                              "folder, or re-zip it without a password") from None
        raise


def _zip_name(info: zipfile.ZipInfo):
    """A zip member's name, '/'-separated. Archivers (Info-ZIP, macOS's) store UTF-8 names without the
    flag that says so, which zipfile then reads as cp437: read those as UTF-8 where their bytes are UTF-8."""
    name = info.filename
    if info.create_system == 0:  # made on Windows (.NET's ZipFile, PowerShell's Compress-Archive): '\\' separates
        name = name.replace("\\", "/")
    if info.flag_bits & 0x800:
        return name
    try:
        return name.encode("cp437").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return name


def label(path: Path, name):
    return f"{path}:{name}" if path.is_file() else str(path / name)


def available_memory():
    """Bytes the kernel could give this process without swapping (MemAvailable), or None; at most
    ENGINE_MEMORY_LIMIT where that test setting is given (engine.memory)."""
    from engine.memory import memory_limit

    limit = memory_limit()
    available = _available_memory()
    return available if limit is None else limit if available is None else min(limit, available)


def _available_memory():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass
class Survey:
    """What one pass over a source's names found before decoding: its image count, every folder it
    lists, and its first image's ((W, H), name, channels), () where that one does not open."""
    count: int
    folders: list
    first: tuple
    holding: dict = field(default_factory=dict)  # folder tuple -> its image count
    others: dict = field(default_factory=dict)  # extension -> count of files not read as images (not hidden)
    copies: dict = field(default_factory=dict)  # an image name an archive holds more than once -> its member count

    def unused_line(self, path):
        """A line naming the files that are not images this engine reads, by extension, or None."""
        return not_used_line(path, self.others)

    def copies_line(self, path):
        """A line naming the image names the archive holds more than once, whose earlier members are
        not read (`last_copies`), or None."""
        if not self.copies:
            return None
        extra, names = sum(self.copies.values()) - len(self.copies), sorted(self.copies)
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        return (f"Not used: {extra:,} earlier member{'s' if extra > 1 else ''} of {path} under an image name it holds "
                f"more than once ({shown}); the last member of each name is read, as extracting the archive keeps it")

    def lines(self, path):
        """What the decode says of the source's files before decoding: the files not used."""
        return [line for line in (self.unused_line(path), self.copies_line(path)) if line]

    def expected(self, path, size):
        """`_decode`'s `first`: the first image's size and name where the images must all share it."""
        return (*self.first[:2], str(path)) if size is None and self.first else None


class DoesNotFit(EngineError):
    """check_memory's finding that a source's decoded images would not fit in memory: `read` then
    decodes it into the file cache (engine.data.filecache) instead."""

    def __init__(self, message, survey, size, channels):
        super().__init__(message)
        self.survey, self.size, self.channels = survey, size, channels  # (H, W), 1 or 3


def check_memory(path: Path, size=None):
    """The source's Survey; raises DoesNotFit, before decoding, for a source whose decoded images
    would not fit in memory: the count times the first image's size (or `size`, H x W), twice over
    while they are stacked."""
    from PIL import Image, UnidentifiedImageError

    count, first, first_key, folders, holding, others, names = 0, None, None, [], {}, {}, {}
    listed = set()
    for name, read in members(path):
        parts = layout.parts_of(name)
        # every folder a member sits in, listed or not: an archive made without folder entries (zip -D,
        # a tar of files) still shows a class folder that holds only hidden files or other files
        for folder in [parts] if read is None else (parts[:i] for i in range(1, len(parts))):
            if folder not in listed and ".." not in folder:
                listed.add(folder)
                folders.append(folder)
        if read is None:
            continue
        folder = layout.folder_of(name)
        if folder is None:
            if ".." in parts:  # an archive member naming a place outside it: never read, but said
                others["'..' in the name"] = others.get("'..' in the name", 0) + 1
            elif not layout.hidden(parts):
                suffix = posixpath.splitext(name)[1].lower() or "no extension"
                others[suffix] = others.get(suffix, 0) + 1
            continue
        key = extracted_name(name)
        names[key] = names.get(key, 0) + 1
        if names[key] == 1:  # a name the archive holds again is one image once extracted (last_copies)
            count += 1
            holding[folder] = holding.get(folder, 0) + 1
        if first is None or (names[key] > 1 and key == first_key):  # the first image's last copy is the one read
            first_key = key
            try:
                with Image.open(io.BytesIO(read())) as image:
                    check_size(image, label(path, name), size)
                    first = (upright_size(image), label(path, name), 1 if grey(image) else 3)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
                first = ()  # the decoding pass names the bad file
    copies = {key: n for key, n in names.items() if n > 1} if not path.is_dir() else {}
    survey = Survey(count, folders, first or (), holding, others, copies)
    available = available_memory()
    if not first or available is None:
        return survey
    (width, height), _, channels = first
    if size is not None:
        height, width = size
    need = 2 * count * width * height * channels
    if need > available:
        raise DoesNotFit(f"{path}: decoding its {count:,} images of {width}x{height}x{channels} needs about "
                         f"{need / 1e9:,.1f} GB of memory, and {available / 1e9:,.1f} GB is available; "
                         "use fewer or smaller images (--image-size), or a machine with more memory",
                         survey, (height, width), channels)
    return survey
