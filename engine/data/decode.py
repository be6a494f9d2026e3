"""Decoding one image of a folder or archive, in the decoding processes (engine.data.pool): its bytes to
a uint8 array fitted to `--image-size` (engine.pixels), or the one line naming why it cannot be read.
"""

import io

import numpy as np

from engine.data.sources import grey
from engine.errors import EngineError, UsageError
from engine.pixels import check_size, fit, upright_size


def mixed_sizes(path, first, other):
    """The one line for a source whose images differ in size: `first` and `other` are ((W, H), name)."""
    (a, first_name), (b, other_name) = first, other  # said as HxW, as --image-size takes it
    return (f"{path}: images differ in size ({a[1]}x{a[0]} {first_name}, {b[1]}x{b[0]} {other_name}, as HxW); all "
            "images must "
            "share one size: pass --image-size S (or HxW) to resize them once (--resize: stretch, the default, or crop)")


def decode(item):
    """(H, W) uint8 for a grayscale image, (H, W, 3) for any other, from (name, bytes, image size or None,
    resize rule, the first image's ((W, H), name) or None, and a mode every image is decoded as: None, or "L" for
    a model of gray images, a colour one converted before it is fitted, as engine predict does). With an image size, resized to it by
    engine.pixels.fit; without one, an image whose header differs from the first's size is refused
    before its pixels are decoded. Runs in the decoding processes."""
    from PIL import Image, UnidentifiedImageError

    name, data, size, rule, first = item[:5]
    mode = item[5] if len(item) > 5 else None
    Image.MAX_IMAGE_PIXELS = None  # check_size refuses large ones, naming the size
    if not data:
        raise EngineError(f"cannot decode image {name}: the file is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            check_size(image, name, size)  # by its header, before a pixel is decoded
            if size is None and first is not None and upright_size(image) != first[0]:
                raise UsageError(mixed_sizes(first[2], first[:2], (upright_size(image), name)))
            return np.asarray(fit(image, size, mode or ("L" if grey(image) else "RGB"), rule))  # 16-bit scaled
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        reason = "not an image PIL can read" if isinstance(error, UnidentifiedImageError) else error
        raise EngineError(f"cannot decode image {name}: {reason}") from None


def decode_or_say(item):
    """`decode`, an image that cannot be decoded given back as its line (a str) rather than raised, so that
    one decode names every such image (fixed at once, not one per decode of a large folder); images of
    another size than the first stop it at once (--image-size is wanted, not a fix per image)."""
    try:
        return decode(item)
    except UsageError:
        raise
    except EngineError as error:
        return str(error)


def undecodable(bad):
    """The one line for the images of a decode that cannot be decoded: `bad` [(name, its line)]."""
    more = len(bad) - 1
    others = ", ".join(name for name, _ in bad[1:4]) + (" ..." if more > 3 else "")
    return bad[0][1] + (f" (and {more:,} more image{'s' if more > 1 else ''} that cannot be decoded: {others}; remove "
                        "or replace them)" if more else "")
