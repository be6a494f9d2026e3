"""Make a mixed-size copy of an image-folder archive: every image upscaled to a random size (each side
40-160 pixels, aspect ratio between 3:4 and 4:3) and re-encoded as JPEG, in the same layout.

    python bench/make_mixed.py ../shared/datasets/cifar10-jpeg.tar.gz /tmp/mixed [--flat] [--seed 0]

--flat writes one folder of class subfolders (no train/ and test/) for `--test-split`. It is the
input of issue 16's acceptance (`engine train --data /tmp/mixed --image-size 32`); the same maker,
at a small scale, builds the test fixture in tests/test_own_images.py.
"""

import argparse
import io
import os
import random
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path, PurePosixPath

SIDES, RATIO, QUALITY = (40, 160), (3 / 4, 4 / 3), 90


def mixed_size(rng):
    """(width, height) with each side in SIDES and width / height in RATIO."""
    while True:
        width, height = rng.randint(*SIDES), rng.randint(*SIDES)
        if RATIO[0] <= width / height <= RATIO[1]:
            return width, height


def resize(item):
    """(relative path, JPEG bytes) upscaled to the item's size."""
    from PIL import Image

    name, data, size = item
    with Image.open(io.BytesIO(data)) as image:
        out = io.BytesIO()
        image.convert("RGB").resize(size, Image.BICUBIC).save(out, format="JPEG", quality=QUALITY)
    return name, out.getvalue()


def images(archive):
    """(relative path as split/class/file, bytes) of every image in a .tar(.gz) image folder."""
    with tarfile.open(archive, "r:*") as tar:
        for info in tar:
            parts = PurePosixPath(info.name).parts
            if info.isfile() and parts[-1].lower().endswith((".jpg", ".jpeg", ".png")) and len(parts) >= 3:
                yield "/".join(parts[-3:]), tar.extractfile(info).read()


def make(archive, out, flat=False, seed=0, limit=None):
    """Write the mixed-size copy of `archive` under `out`; returns the number of images."""
    rng, out, count = random.Random(seed), Path(out), 0
    items = []
    for name, data in images(archive):
        split, label, file = name.split("/")
        target = f"{label}/{split}-{file}" if flat else name
        items.append((target, data, mixed_size(rng)))
        if limit and len(items) >= limit:
            break
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        for name, data in pool.map(resize, items, chunksize=256):
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(data)
            count += 1
    return count


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archive")
    parser.add_argument("out")
    parser.add_argument("--flat", action="store_true", help="class folders only, no train/ and test/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="only the first N images")
    args = parser.parse_args()
    print(f"wrote {make(args.archive, args.out, args.flat, args.seed, args.limit):,} images under {args.out}")


if __name__ == "__main__":
    main()
