"""Archives of image folders read in place: which files are archives, a member's name as extracting it
gives it (Windows zips' '\\', UTF-8 names without their flag, absolute and './' names), a member's bytes
(links followed inside the archive; a method or a password zipfile cannot read is one line), and the
last member of a name an archive holds twice, and a tar that ends before its end-of-archive blocks (cut
short or damaged, where tarfile stops without a word). engine.data.sources lists the members with these.
"""

import posixpath
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from engine.data.dataset import ARCHIVE_SUFFIXES
from engine.errors import EngineError


def archive_kind(path: Path):
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(ARCHIVE_SUFFIXES):  # .tar, .tar.gz, .tgz
        return "tar"
    return None


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


def tar_read(archive, info, path):
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


class Headers(tarfile.TarInfo):
    """tarfile's member header that keeps on its archive (`ending`) the header error that ended the reading:
    tarfile ends its iteration without a word at a header that is all zeros (the end-of-archive
    blocks), at none (the file cut at a member's end), a part of one, or a damaged one, whose members
    after it are then left out; `check_end` tells them apart."""

    @classmethod
    def fromtarfile(cls, archive):
        try:
            return super().fromtarfile(archive)
        except tarfile.HeaderError as error:
            archive.ending = error
            raise


def check_end(archive, path, last):
    """One line for a tar (opened with tarinfo=Headers, read to its end) that did not end in its
    end-of-archive blocks: cut short, or a member header damaged; `last`: the last member read."""
    ending = getattr(archive, "ending", None)
    if ending is None or isinstance(ending, tarfile.EOFHeaderError):
        return
    after = f"after its member {last}" if last else "before its first member"
    if isinstance(ending, tarfile.InvalidHeaderError):
        raise EngineError(f"{path} has a damaged member header {after} (at byte {archive.offset:,}: {ending}), where "
                          "reading it stops, so the members after it would be left out; get the archive again, or "
                          "extract it (GNU tar skips the damaged header) and give the folder")
    raise EngineError(f"{path} ends {after} without the blocks that end a tar: it was cut short (a download or copy not "
                      "finished?) and the members after that one are missing; get the whole archive again")


METHODS = {9: "Deflate64, Windows Explorer's for large zips", 98: "PPMd", 95: "xz", 97: "WavPack", 99: "AES encryption"}


def zip_read(archive, info, path):
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


def zip_name(info: zipfile.ZipInfo):
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
