"""Images that rows reference: resolving paths, reading sizes, content hashes and perceptual hashes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

URL_PREFIXES = ("http://", "https://", "s3://", "gs://", "data:")


def is_url(ref: str) -> bool:
    """Whether an image reference is a URL (reported, never fetched)."""
    return str(ref).startswith(URL_PREFIXES)


def resolve(ref: str, root: Path) -> Path:
    """A local image path, relative references taken against ``root``."""
    path = Path(str(ref)).expanduser()
    return path if path.is_absolute() else root / path


@dataclass
class ImageInfo:
    """What a check learned about one referenced image; ``error`` says why it is unusable."""

    ref: str
    width: int = 0
    height: int = 0
    file_size: int = 0
    error: str | None = None
    url: bool = False


def inspect(ref: str, root: Path, decode: bool = True) -> ImageInfo:
    """Size and dimensions of one image; ``decode`` also decodes its pixels to catch truncated files."""
    from PIL import Image

    if not isinstance(ref, str) or not ref:
        return ImageInfo(str(ref), error="empty image reference")
    if is_url(ref):
        return ImageInfo(ref, url=True)
    path = resolve(ref, root)
    try:
        size = path.stat().st_size
    except OSError:
        return ImageInfo(ref, error=f"image not found: {path}")
    try:
        with Image.open(path) as im:
            width, height = im.size
            if decode:
                im.load()
    except Exception as e:  # PIL raises many kinds (UnidentifiedImageError, OSError, SyntaxError, ...)
        return ImageInfo(ref, file_size=size, error=f"undecodable image {path}: {e}")
    return ImageInfo(ref, width, height, size)


def content_hash(ref: str, root: Path) -> str:
    """sha1 of the image file's bytes; the reference itself for URLs and unreadable files."""
    if is_url(ref):
        return "url:" + ref
    try:
        return hashlib.sha1(resolve(ref, root).read_bytes()).hexdigest()
    except OSError:
        return "ref:" + ref


def dhash(ref: str, root: Path, size: int = 8) -> int | None:
    """A 64-bit difference hash (as imagehash's ``dhash``): greyscale, resize to 9x8, compare neighbours."""
    from PIL import Image

    if is_url(ref):
        return None
    try:
        with Image.open(resolve(ref, root)) as im:
            grey = im.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS)
    except Exception:  # unreadable images take no part in near-duplicate search
        return None
    pixels = np.asarray(grey, dtype=np.int16)
    bits = (pixels[:, 1:] > pixels[:, :-1]).flatten()
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return (a ^ b).bit_count()
