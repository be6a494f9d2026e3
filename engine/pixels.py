"""What both image readers share: which files are images, the decode-size limit checked from a header,
a photo's EXIF orientation, 16-bit/float to 8-bit, and the line naming the files that are not images.

Image folders (engine.data.imagefolder) and `engine predict` (export.images) read the same image
files, so they refuse the same sizes and scale deep images the same way. Torch-free, so
`engine predict` stays light.
"""

import functools
import io

import numpy as np

from engine.errors import EngineError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".bmp", ".dib", ".gif", ".webp", ".tif", ".tiff",
                    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".qoi", ".avif", ".jp2", ".j2k"}  # what PIL decodes
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")  # the archives an image folder may come as
MAX_PIXELS = 50_000_000  # 150 MB decoded as RGB; a 20000x20000 image (1.2 GB) is refused by its header
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ORIENTATION = 0x0112  # the EXIF tag: how a camera's stored pixels turn upright (2-8; 1 is as stored)
SIDEWAYS = (5, 6, 7, 8)  # orientations that swap width and height
# Folders a system keeps beside a user's images, never a class's images: a Mac's zip (__MACOSX), a Synology NAS's
# thumbnails of every photo (@eaDir/IMG_1.JPG/SYNOPHOTO_THUMB_M.jpg, which would train on each test photo's
# thumbnail), and what Windows and ext4 put at a drive's top folder (empty, read as empty class folders).
SYSTEM_FOLDERS = frozenset({"__MACOSX", "@eaDir", "$RECYCLE.BIN", "System Volume Information", "lost+found"})
JPEG_FORMATS = ("JPEG", "MPO")  # drafted: MPO is a JPEG holding more pictures (a phone's Ultra HDR, depth), PIL's JPEG


def not_used_line(path, others):
    """A line naming the files of `path` that are not images this engine reads, by extension
    ({extension: count}), or None: training's decode and `engine predict FOLDER` say the same."""
    if not others:
        return None
    count = sum(others.values())
    kinds = ", ".join(f"{ext} {n:,}" for ext, n in sorted(others.items(), key=lambda kv: -kv[1])[:5])
    return (f"Not used: {count:,} file{'s' if count > 1 else ''} of {path} that {'are' if count > 1 else 'is'} not "
            f"an image file this engine reads ({kinds}{', ...' if len(others) > 5 else ''})")


def unlisted_folder(error):
    """os.walk's onerror for a folder of images: a folder that cannot be listed (no permission to read
    it, a path longer than the system takes) is one line, where os.walk would leave it out, and its
    images with it, without a word."""
    raise EngineError(f"cannot read the folder {error.filename} ({error.strerror}), so its images would be left out; "
                      "make it readable, or move the images to a shorter path")


def orientation(image):
    """The EXIF orientation of an opened PIL image (1 where it has none), read from its header: a
    phone photo taken upright is often stored sideways with orientation 6. A PNG is asked only where
    its header carried EXIF (PIL would decode the whole file to look further); a TIFF only where PIL
    does not turn it upright by itself (`pil_turns_tiffs`), which would turn it twice."""
    if (image.format == "PNG" and "exif" not in image.info) or (image.format == "TIFF" and pil_turns_tiffs()):
        return 1
    try:
        value = image.getexif().get(ORIENTATION, 1)
    except Exception:  # a damaged EXIF block is no orientation; the pixels still decode
        return 1
    return value if value in range(1, 9) else 1


@functools.cache
def pil_turns_tiffs():
    """Whether this PIL turns a TIFF upright as its EXIF orientation says by itself (Pillow 13 does:
    the size is upright once opened, the pixels once loaded), asked of a 2x1 TIFF made in memory."""
    from PIL import Image

    buffer, image = io.BytesIO(), Image.new("L", (2, 1))
    exif = image.getexif()
    exif[ORIENTATION] = 6
    image.save(buffer, "TIFF", exif=exif)
    with Image.open(buffer) as back:
        return back.size == (1, 2)


def upright_size(image):
    """(W, H) of an opened PIL image as `fit` turns it upright (its EXIF orientation applied)."""
    width, height = image.size
    return (height, width) if orientation(image) in SIDEWAYS else (width, height)


def upright(image, turn):
    """`image` turned as EXIF orientation `turn` says (PIL's ImageOps.exif_transpose, on pixels already
    converted: the conversion drops the tag)."""
    from PIL import Image

    method = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}.get(turn)
    return image.transpose(method) if method is not None else image


def check_size(image, source, size=None):
    """Refuse a PIL image (opened, not yet decoded) that would decode to more than MAX_PIXELS, by its
    header: its own size, or for a JPEG fitted to `size` (H, W) the draft size `fit` decodes it at
    (a 108-megapixel phone photo fitted to 224x224 decodes at 1/8 scale, 1.7 megapixels)."""
    width, height = image.size
    if width < 1 or height < 1:
        raise EngineError(f"{source} is {width}x{height} pixels: an image with no pixels")
    decoded = draft_size(image, size)
    if decoded[0] * decoded[1] > MAX_PIXELS:
        at = f" (decoded at {decoded[0]}x{decoded[1]})" if decoded != (width, height) else ""
        raise EngineError(f"{source} is {width}x{height} pixels{at}, too large to decode safely (limit "
                          f"{MAX_PIXELS:,} pixels)")


def draft_request(image, size):
    """The (W, H) `fit` asks PIL's JPEG draft mode for when fitting `image` to `size` (H, W), or None
    where it decodes at full size (not a JPEG, no size, or less than twice the size asked for)."""
    if size is None or image.format not in JPEG_FORMATS:
        return None
    width, height = upright_size(image)  # the size asked for is the upright image's
    scale = max(size[0] / height, size[1] / width)  # both sides stay at least the size asked for
    if scale > 0.5:
        return None
    return max(1, round(image.width * scale)), max(1, round(image.height * scale))


def draft_size(image, size):
    """(W, H) the image decodes at for `fit`: what PIL's JpegImageFile.draft picks for draft_request
    (the largest of 1/8, 1/4, 1/2 that keeps both sides at least the request, sides rounded up)."""
    width, height = image.size
    request = draft_request(image, size)
    if request is None:
        return width, height
    most = min(width // request[0], height // request[1])
    factor = next(f for f in (8, 4, 2, 1) if most >= f)
    return -(-width // factor), -(-height // factor)


def eight_bit(image):
    """16-bit, 32-bit integer and float images as 8-bit grayscale by scaling (PIL's convert('L') would clip them)."""
    from PIL import Image

    if image.mode in SIXTEEN_BIT:  # a signed 16-bit TIFF's -32768..32767 scaled as unsigned 0..65535 are;
        depth = integer_bits(image)  # a 32-bit TIFF (mode I) from its own full range, 0..2**32-1 or from -2**31
        values = np.asarray(image, dtype=np.int64)
        if depth == 32:
            values = values + 2**31 if signed(image) == 32 else values & 0xFFFFFFFF  # PIL's int32 of uint32
        values = np.clip(values + (32768 if signed(image) == 16 else 0), 0, 2**depth - 1)
        return Image.fromarray(((values * 255 + 2 ** (depth - 1) - 1) // (2**depth - 1)).astype(np.uint8))
    if image.mode == "L" and signed(image) == 8:  # a signed 8-bit TIFF, which PIL reads as its bytes (-1 as 255)
        return Image.fromarray(np.asarray(image) ^ np.uint8(0x80))  # -128..127 as 0..255
    if image.mode == "LAB":  # a CIELab TIFF: to sRGB first, as PIL converts no LAB to grey (its error names RGB)
        return lab_to_rgb(image)
    if image.mode == "F":  # floats: [0, 1] if they fit, else taken as 0-255
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if np.nanmax(values, initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.nan_to_num(values) * scale, 0, 255).round().astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:  # as PIL asks (its UserWarning otherwise): the same
        return image.convert("RGBA")  # colours, through RGBA, whose alpha the next convert drops
    return image


def signed(image):
    """The bits of a one-channel image's signed integer samples (a TIFF's SampleFormat 2: 16 for PIL's raw
    mode I;16S, 8 for the bytes it reads as L), or None, by its tags, which stay once it is loaded."""
    tags = getattr(image, "tag_v2", None) if image.mode in ("I", "L") else None
    if tags is None:
        return None
    kind, bits = (value[0] if isinstance(value, tuple) else value for value in (tags.get(339, 1), tags.get(258, 1)))
    return bits if kind == 2 else None


def integer_bits(image):
    """The bits of an integer grey image's samples: 32 for a 32-bit TIFF (PIL's mode I, by its tags), else 16."""
    bits = getattr(image, "tag_v2", {}).get(258, 16) if image.mode == "I" else 16
    return 32 if (bits[0] if isinstance(bits, tuple) else bits) == 32 else 16


def lab_to_rgb(image):
    """A CIELab image as sRGB: PIL's own conversion (Pillow 11 on), else littlecms's (ImageCms), which agree."""
    try:
        return image.convert("RGB")
    except ValueError:
        try:
            from PIL import ImageCms

            transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                                "LAB", "RGB")
        except Exception as error:  # a PIL built without littlecms
            raise ValueError(f"a CIELab (mode LAB) image, which this PIL cannot convert to RGB ({error})") from None
        return ImageCms.applyTransform(image, transform)


def parse_image_size(text, flag="--image-size"):
    """'32' -> (32, 32), '48x64' -> (48, 64) as (height, width); one line for anything else."""
    parts = str(text).strip().lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 1 or max(values) > 4096:
        raise EngineError(f"{flag} takes a side S or HxW in pixels (1 to 4096), e.g. 32 or 48x64; not {text!r}")
    return tuple(values)


# --resize: how an image of another size becomes (H, W), by the names ONNX metadata records them under.
RESIZE_RULES = {"crop": "shorter-side-then-center-crop", "stretch": "stretch"}


def fit(image, size, mode, rule="stretch"):
    """An opened PIL image decoded as `mode` ("L" or "RGB"; 16-bit scaled, alpha dropped) and fitted to
    `size` (H, W) by `rule`, after turning it upright as its EXIF orientation says (a phone photo
    stored sideways is seen as its viewer shows it): "stretch" scales the whole image to (H, W),
    changing its aspect ratio; "crop" scales it, keeping its aspect ratio, to cover (H, W) and takes the centre (for a square S
    the shorter side becomes S). `size` None, or the image's own size, decodes it unscaled.

    Training's decode (engine.data.imagefolder) and every inference path (export.images) call this
    one function, so a photo gives the same pixels at training and at serving time. A JPEG much
    larger than needed is decoded at a reduced scale first (PIL's draft mode: 1/2, 1/4 or 1/8 in the
    DCT, never below the size asked for); the resize is PIL's antialiased bicubic (on a mixed-size
    CIFAR-10 copy, 3 epochs of cifar_cnn: 71.7% against 69.8% with bilinear; the original 32x32 71.9%)."""
    from PIL import Image

    request, turn = draft_request(image, size), orientation(image)
    if request is not None:
        image.draft(image.mode, request)
    image = upright(eight_bit(image).convert(mode), turn)
    if size is None or image.size == (size[1], size[0]):
        return image
    height, width = size
    if rule == "stretch":
        return image.resize((width, height), Image.BICUBIC)
    scale = max(height / image.height, width / image.width)
    covered = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    left, top = (covered[0] - width) // 2, (covered[1] - height) // 2
    if covered[0] * covered[1] > MAX_PIXELS:  # a strip (200000x1) would cover 64x64 with 800 million pixels:
        sx, sy = covered[0] / image.width, covered[1] / image.height  # scale only the part the crop keeps
        box = (left / sx, top / sy, (left + width) / sx, (top + height) / sy)
        return image.resize((width, height), Image.BICUBIC, box=box)
    image = image.resize(covered, Image.BICUBIC) if covered != image.size else image
    return image.crop((left, top, left + width, top + height))
