"""What both image readers share: which files are images, the decode-size limit checked from a header,
and 16-bit/float to 8-bit.

Image folders (engine.data.imagefolder) and `engine predict` (export.images) read the same image
files, so they refuse the same sizes and scale deep images the same way. Torch-free, so
`engine predict` stays light.
"""

import numpy as np

from engine.errors import EngineError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
MAX_PIXELS = 50_000_000  # 150 MB decoded as RGB; a 20000x20000 image (1.2 GB) is refused by its header
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def check_size(image, source):
    """Refuse a PIL image (opened, not yet decoded) larger than MAX_PIXELS, by its header."""
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise EngineError(f"{source} is {width}x{height} pixels, too large to decode safely (limit {MAX_PIXELS:,} pixels)")


def eight_bit(image):
    """16-bit and float images as 8-bit grayscale by scaling (PIL's convert('L') would clip them)."""
    from PIL import Image

    if image.mode in SIXTEEN_BIT:
        values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))
    if image.mode == "F":  # floats: [0, 1] if they fit, else taken as 0-255
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if np.nanmax(values, initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.nan_to_num(values) * scale, 0, 255).round().astype(np.uint8))
    return image
