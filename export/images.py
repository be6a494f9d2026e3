"""Images in, model input out: files, PIL images, uint8 arrays or encoded file bytes -> float32 (N, C, H, W)
in [0, 1].

Preprocessing comes from the model's metadata alone: convert to gray or RGB as `input_size`'s C
says (alpha dropped, 16-bit scaled, not clipped), fit to H x W by training's own rule
(engine.pixels.fit with the file's `resize`: the whole image stretched to H x W, or its shorter side
scaled to cover H x W and the centre cropped; antialiased bicubic), scale by 1/255. A file is opened
by its header first, so an image too large to decode safely is refused before a pixel is read. Every bad file is one line naming it.
"""

import glob
import os
from pathlib import Path

import numpy as np

from engine.errors import EngineError, UsageError
from engine.pixels import ARCHIVE_SUFFIXES, IMAGE_EXTENSIONS, MAX_PIXELS, SYSTEM_FOLDERS, check_size, fit, not_used_line, unlisted_folder  # noqa: F401 (MAX_PIXELS: part of this module's API)


def expand(paths, note=None):
    """Files for the command line's IMAGE arguments: a directory means every image file under it.
    note: told one line naming a folder's other files (not hidden) by extension, as training says them."""
    files = []
    for given in paths:
        if not str(given).strip():  # Path('') is the current folder: every image under it
            raise EngineError("an empty path names no image (it is not the current folder)")
        path = Path(given)
        if not path.exists() and not path.is_symlink() and glob.has_magic(str(given)):  # a pattern no shell expanded
            matched = sorted(glob.glob(str(given), recursive=True))  # (quoted, or Windows' cmd): expanded as it would
            if not matched:
                raise EngineError(f"{given}: no file matches this pattern")
            files += expand(matched, note)
            continue
        if path.is_dir():
            others = {}
            found = images_under(path, others)
            if not found:
                raise EngineError(f"{path} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            if others and note is not None:
                note(not_used_line(path, others))
            files += found
        else:  # a missing one too: open_image names it, and the others are still predicted
            files.append(path)
    return files


def images_under(folder, others=None):
    """Every image file under `folder`, sorted, hidden ones left out; links to folders are followed, as
    training's decode follows them, each folder once (a link back up is not a loop). others: a dict
    counting the other files (not hidden) by extension. A folder that cannot be listed is one line
    (engine.pixels.unlisted_folder), as in training."""
    found, seen, top = [], set(), os.path.realpath(folder)
    for root, dirs, files in os.walk(folder, followlinks=True, onerror=unlisted_folder):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SYSTEM_FOLDERS  # as training skips them
                   and not _up(os.path.join(root, d), top)]
        found += [Path(root, name) for name in files
                  if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS]
        for name in files if others is not None else ():
            if not name.startswith(".") and Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                suffix = Path(name).suffix.lower() or "no extension"
                suffix = "broken link" if not os.path.exists(os.path.join(root, name)) else suffix  # a folder's, perhaps
                others[suffix] = others.get(suffix, 0) + 1
    return sorted(found)


def _up(path, top):
    """Whether `path` is a link to `top` or a folder above it: walked, it would add the folders beside `top`
    (a link to / walked the whole filesystem), never an image of `top`'s own."""
    if not os.path.islink(path):
        return False
    target = os.path.realpath(path)
    return top == target or top.startswith(target.rstrip(os.sep) + os.sep)


def open_image(path, size=None):
    """A lazily decoded PIL image for `path`, refused by its header when empty, not an image or too large
    (to decode whole, or when fitted to `size` (H, W): engine.pixels.check_size)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        if path.is_symlink() and not path.exists():
            raise EngineError(f"{path} is a broken link (to {os.readlink(path)})")
        raise EngineError(f"{path}: no such file or directory" if not path.exists() else f"{path} is not a file")
    if path.stat().st_size == 0:
        raise EngineError(f"{path} is empty (0 bytes), not an image")
    bomb_limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # PIL's own check would raise without the size; ours below names it
        image = Image.open(path)  # reads the header only
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        if path.name.lower().endswith(ARCHIVE_SUFFIXES):  # training reads one; predict reads files and folders
            raise EngineError(f"{path} is an archive, not an image: extract it and give the folder (engine predict "
                              "reads image files and folders of them)") from None
        raise EngineError(f"{path} is not a readable image ({error})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = bomb_limit
    check_size(image, path, size)
    return image


def open_bytes(data):
    """A lazily decoded PIL image from an encoded file's bytes, refused as a file would be."""
    import io

    from PIL import Image, UnidentifiedImageError

    if not data:
        raise EngineError("image bytes are empty (0 bytes), not an image")
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # to_pixels' check names the size
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise EngineError("image bytes are not an image PIL can read") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise EngineError(f"image bytes are not a readable image ({error})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def to_pixels(image, input_size, source="image", rule="stretch"):
    """(H, W, C) uint8 pixels of a PIL image, converted and fitted to input_size [C, H, W] by `rule`."""
    channels, height, width = input_size
    check_size(image, source, (height, width))
    try:
        pixels = np.asarray(fit(image, (height, width), "L" if channels == 1 else "RGB", rule), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data found while decoding
        raise EngineError(f"cannot decode {source} ({error})") from None
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _left_as_given(image):
    """A caller's PIL image as `fit` may decode it: a JPEG not yet loaded, which fit's draft mode would decode
    in place at 1/2 to 1/8 (the caller's 1000x600 photo left 125x75), is opened afresh from its encoded bytes,
    giving its path's pixels and leaving the caller's untouched; any other image is fitted as given."""
    from engine.pixels import JPEG_FORMATS

    fp, tile = getattr(image, "fp", None), getattr(image, "tile", None)  # a PIL ImageFile's, not an Image.new's
    if tile and fp is None:  # PIL's load would fail on an assert
        raise EngineError("a PIL image given was closed before its pixels were read (Image.open in a with block): "
                          "call image.load() inside the block, or give its path")
    if image.format not in JPEG_FORMATS or not tile or image.tell() != 0:
        return image
    try:
        where = fp.tell()
        fp.seek(0)  # PIL decodes a JPEG from its file's start
        data = fp.read()
        fp.seek(where)
    except (OSError, ValueError):  # its file closed: to_pixels says it cannot decode the image
        return image
    return open_bytes(data)


def _array_images(array, channels=3):
    """A uint8 array as a list of (H, W[, C]) images: (H, W), (H, W, C), (N, H, W) or (N, H, W, C). For a
    model of `channels` 3, a (3 or 4, H, W) array is refused: one image channels first, or gray ones?"""
    if array.dtype != np.uint8:
        prepared = " (a prepared batch for Classifier.logits is float32 (N, C, H, W) in [0, 1])" if array.ndim == 4 else ""
        raise UsageError(f"image arrays must be uint8 pixels (0-255), not {array.dtype}{prepared}")
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 2, 3, 4)):  # 2: gray with alpha
        return [array]
    if array.ndim == 3 and array.shape[0] in (3, 4) and channels == 3:  # PyTorch's (C, H, W), or gray images?
        raise UsageError(f"an array of shape {array.shape} could be one image channels first or {array.shape[0]} gray "
                         "images: give one image channels last, (H, W, C) (array.transpose(1, 2, 0)), or gray images "
                         "as a list of (H, W) arrays")
    if array.ndim in (3, 4):
        return list(array)
    raise UsageError(f"an image array must be (H, W), (H, W, C), (N, H, W) or (N, H, W, C), not {array.shape}")


def _from_array(array):
    from PIL import Image

    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] not in (2, 3, 4):
        raise UsageError(f"an image array needs 1, 2 (gray and alpha), 3 or 4 channels last, not shape {array.shape}")
    return Image.fromarray(np.ascontiguousarray(array))  # (H, W, 2) reads as LA


def batch(images, input_size, rule="stretch"):
    """float32 (N, C, H, W) in [0, 1] for a list of paths, PIL images and uint8 arrays (or one of them),
    each fitted to input_size by `rule` (the --resize training used: crop or stretch)."""
    from PIL import Image

    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray, bytes, bytearray, memoryview)):
        images = [images]
    if isinstance(images, dict) or not hasattr(images, "__iter__"):
        raise UsageError(f"cannot read images from {type(images).__name__}; give a path, PIL image, uint8 array or "
                         "encoded file bytes, or a list of them")
    pixels = []
    for item in images:
        if isinstance(item, (bytes, bytearray, memoryview)):  # an encoded file's contents (a request body, a blob)
            with open_bytes(bytes(item)) as image:
                pixels.append(to_pixels(image, input_size, "image bytes", rule))
        elif isinstance(item, (str, os.PathLike)):
            with open_image(item, input_size[1:]) as image:
                pixels.append(to_pixels(image, input_size, str(item), rule))
        elif isinstance(item, Image.Image):
            pixels.append(to_pixels(_left_as_given(item), input_size, rule=rule))
        elif isinstance(item, np.ndarray):
            pixels += [to_pixels(_from_array(a), input_size, "array", rule) for a in _array_images(item, input_size[0])]
        else:
            raise UsageError(f"cannot read an image from {type(item).__name__}; give paths, PIL images, uint8 arrays "
                             "or encoded file bytes")
    if not pixels:
        raise UsageError("no images given")
    return (np.stack(pixels).transpose(0, 3, 1, 2).astype(np.float32) / 255).copy()  # (N, C, H, W)
