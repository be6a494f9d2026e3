"""What an image-folder source holds, before anything is decoded: its files (a directory's, or an
archive's members, read one by one and never extracted: engine.data.archives), its folders, and a survey of its image
count and first image that decides whether the decode fits in memory (engine.data.imagefolder reads
it; engine.data.filecache decodes what does not fit).
"""

import io
import os
import posixpath
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from engine.data import layout
from engine.data.archives import Headers, archive_kind, check_end, extracted_name, tar_read, zip_name, zip_read
from engine.errors import EngineError
from engine.pixels import IMAGE_EXTENSIONS, SIXTEEN_BIT, check_size, not_used_line, unlisted_folder, upright_size

GRAY_MODES = ("L", "LA", "La", "1", "F", *SIXTEEN_BIT)  # LA: grey with alpha, which is dropped as RGBA's is


def grey(image):
    """Whether an opened (not yet decoded) image is grey: by its mode, or a 16-bit grey-with-alpha PNG,
    which PIL opens as RGBA (its tile's raw mode says LA;16B)."""
    if image.mode in GRAY_MODES:
        return True
    return image.format == "PNG" and bool(image.tile) and str(image.tile[0][3]).startswith("LA;16")


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
                yield zip_name(info), None if info.is_dir() else lambda info=info: zip_read(archive, info, path)
    elif kind == "tar":
        with tarfile.open(path, "r:*", tarinfo=Headers) as archive:
            last = None
            for info in archive:
                last = info.name
                if info.isdir():
                    yield info.name, None
                elif info.isfile() or info.islnk() or info.issym():  # a link reads as its target, as in a folder
                    yield info.name, lambda info=info: tar_read(archive, info, path)
            check_end(archive, path, last)  # a tar cut short or damaged: tarfile stops without a word
    else:
        raise EngineError(f"{path} is not a directory or a .tar, .tar.gz or .zip archive of an image folder")


def walk(path: Path):
    """os.walk of a directory, links followed, each folder's names sorted; a link loop (a link to a
    folder it sits in) and a broken link to an image are one line each instead of an OSError deep in
    the walk (a broken link to anything else is kept, for the 'Not used:' line to name), and so is an
    image name on a pipe or a device (a link to /dev/zero), whose reading would never end. A folder
    that cannot be listed is one line too (engine.pixels.unlisted_folder), not left out with its images,
    and so is a folder reached twice through links (a/to_b -> ../b beside b/to_a -> ../a, a loop no
    single link makes, read its images 41 times over, in both classes, until the system's limit on
    links ended it without a word); a hidden one is not walked again, and no link is followed into or
    out of one (a hidden link to / walked the whole filesystem)."""
    seen, unread = {}, set()  # real folder -> the first path it was walked as; hidden folders walked, never read
    def unlisted(error):  # a hidden folder is never read: one this user may not list (another user's .Trash-1000/ on
        if not layout.hidden(Path(error.filename).relative_to(path).parts):  # a shared drive, lost+found/) is no loss
            unlisted_folder(error)

    for root, dirs, files in os.walk(path, followlinks=True, onerror=unlisted):
        here, hidden = os.path.realpath(root), layout.hidden(Path(root).relative_to(path).parts)
        if hidden:  # never read: nothing to count twice, and its links and files are not checked (walked once)
            if here in unread:
                dirs[:] = []
                continue
            unread.add(here)  # and no link out of it followed: a .root -> / would walk the whole filesystem
            dirs[:] = [name for name in dirs if not os.path.islink(os.path.join(root, name))]
        elif here in seen:
            raise EngineError(f"{root} is the folder {seen[here]} again ({here}, reached twice through a link): its "
                              "images would be read twice, in two places; remove the link")
        else:
            seen[here] = root
        if not hidden:  # a hidden link (.root -> /) is not followed either
            dirs[:] = [name for name in dirs if not (layout.hidden((name,)) and os.path.islink(os.path.join(root, name)))]
        for name in dirs if not hidden else ():
            target = os.path.realpath(os.path.join(root, name))
            if here == target or here.startswith(target.rstrip(os.sep) + os.sep):  # a link to / too
                raise EngineError(f"{Path(root, name)} is a link to {target}, a folder it is inside (a loop); "
                                  "remove the link")
        kept = []
        for name in sorted(files):
            full = os.path.join(root, name)
            if hidden:  # its images are counted (the line for a source whose images are all hidden), never read
                kept.append(name)
                continue
            if os.path.islink(full) and not os.path.exists(full):
                if layout.folder_of(name) is None:  # not an image: never read, but said (check_memory), as it may
                    kept.append(name)  # have been a class folder (a link to a drive not mounted)
                    continue
                raise EngineError(f"{full} is a broken link (to {os.readlink(full)}); remove it or restore what it "
                                  "points to")
            if not os.path.isfile(full) and layout.folder_of(name) is not None:  # reading one never ends
                link = f"a link to {os.path.realpath(full)}, " if os.path.islink(full) else ""
                raise EngineError(f"{full} is not a regular file ({link}a pipe, socket or device), not an image; "
                                  "remove it")
            kept.append(name)
        dirs.sort()
        yield root, dirs, kept


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
    hidden: tuple = (0, None)  # image files skipped as hidden ('.data/cat/1.png', '._1.png'): count, first name

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

    def no_images(self, path):
        """The one line for a source with no image to read: all hidden, or none at all."""
        count, name = self.hidden
        if count:
            return (f"{path} holds no images outside hidden files and folders: its {count:,} image file"
                    f"{'s are' if count > 1 else ' is'} under names starting with '.' or in __MACOSX/, which are "
                    f"skipped (e.g. {name}); rename the folder that hides them")
        kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
        return f"{path} holds no images (files ending {kinds}; {layout.LAYOUT})"

    def lines(self, path):
        """What the decode says of the source's files before decoding, kept with the decoded images to be
        said again: an archive's files not used, the names it holds twice. A folder's files not used are
        counted afresh by every start instead (engine.data.imagefolder.read), as a notes.txt added or
        removed leaves its decoded images, and so the cache, as they were."""
        unused = None if path.is_dir() else self.unused_line(path)
        return [line for line in (unused, self.copies_line(path)) if line]

    def expected(self, path, size):
        """`engine.data.decode.decode`'s `first`: the first image's size and name where the images must all share it."""
        return (*self.first[:2], str(path)) if size is None and self.first else None


def count_other(others, path: Path, name, parts):
    """Count in `others` ({kind: count}, the 'Not used:' line's) the file `name` of the source `path`, one that
    is not an image this engine reads: by its extension, as a broken link (a folder's: perhaps a class
    folder's, its drive not mounted) or as an archive member naming a place outside it (never read). A
    hidden file is not counted; returns whether it was."""
    if ".." in parts:
        kind = "'..' in the name"
    elif layout.hidden(parts):
        return False
    else:
        kind = posixpath.splitext(name)[1].lower() or "no extension"
        kind = "broken link" if path.is_dir() and not os.path.exists(path / name) else kind
    others[kind] = others.get(kind, 0) + 1
    return True


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

    count, first, first_key, folders, holding, others, names, hidden = 0, None, None, [], {}, {}, {}, (0, None)
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
            if not count_other(others, path, name, parts) and posixpath.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                hidden = (hidden[0] + 1, hidden[1] or name)  # skipped as hidden: said if all are
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
    survey = Survey(count, folders, first or (), holding, others, copies, hidden)
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
