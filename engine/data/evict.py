"""The decode cache entries of a source's earlier images: a folder whose images change is decoded
again under a new key (engine.data.imagefolder.source_key), and the entry of its earlier images is
never read again. Each entry records the source it was decoded from (its resolved path); once the
current images are cached, the entries of that source under another key are removed, at every
--image-size, so the cache holds one decode of each source, not one more with every edit. Entries of
other sources, and of the current images at another --image-size or under another label (the source
read through a link), are kept.
"""

import re
import shutil
from pathlib import Path

import torch

from engine.memory import size_text

ENTRY = re.compile(r"^[^.].*-([0-9a-f]{20})(-\d+x\d+-[a-z]+)?\.(pt|stream)$")  # LABEL-KEY[-HxW-RULE].pt|.stream


def source_of(entry: Path):
    """The resolved source path the cache entry `entry` (NAME.pt or NAME.stream/) was decoded from,
    or None: an entry of an older version (which recorded none), damaged, or no entry."""
    try:
        if entry.is_dir():
            held = torch.load(entry / "index.pt", weights_only=True)
        else:
            held = torch.load(entry, weights_only=True, mmap=True)
        source = held.get("source")
    except Exception:
        return None
    return source if isinstance(source, str) else None


def remove_earlier(cache_dir: Path, stem, source: Path, log=print):
    """Remove the entries in `cache_dir` that record `source` under a key other than the current images'
    (`stem` is LABEL-KEY, their name): under any label (the source read through a link has its own)."""
    key, resolved = stem.rsplit("-", 1)[1], str(Path(source).resolve())
    freed, count = 0, 0
    try:
        entries = [e for e in Path(cache_dir).iterdir() if (m := ENTRY.search(e.name)) and m.group(1) != key]
    except OSError:
        return
    for entry in entries:
        if source_of(entry) != resolved:
            continue
        try:
            size = sum(f.stat().st_size for f in entry.iterdir()) if entry.is_dir() else entry.stat().st_size
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        except OSError:  # another run removed it first, or a read-only cache: kept, no harm
            continue
        freed, count = freed + size, count + 1
    if count:
        log(f"Removed {count} decode{'s' if count > 1 else ''} of {source}'s earlier images from the cache "
            f"({size_text(freed)}): its images changed since")
