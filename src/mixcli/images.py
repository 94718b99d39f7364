"""Image inputs for every command: a path or ``-`` (stdin) to an upright RGB PIL image, or one clear error."""

from __future__ import annotations

import io
import sys
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

STDIN = "-"


def check_image_path(source: str) -> None:
    """Fail early on a missing path, a directory or a file that is not an image (reads only its header)."""
    if source == STDIN:
        return
    path = _existing_file(source)
    try:
        with Image.open(path):
            pass  # opening parses the header; nothing is decoded yet
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise _not_an_image(source, e) from e


def load_image(source: str | Path | bytes, keep_alpha: bool = False) -> Image.Image:
    """An RGB image from a path, ``-`` (bytes on stdin) or raw bytes, turned upright by its EXIF orientation.

    Transparent images are composited over white (as qwen-vl-utils does), unless ``keep_alpha``: then
    they come as RGBA (LA for grey), for a consumer that flattens them its own way (OCR: rapidocr's).
    """
    if isinstance(source, bytes):
        name, stream = "<bytes>", io.BytesIO(source)
    elif str(source) == STDIN:
        name, stream = "<stdin>", io.BytesIO(_read_stdin())
    else:
        name, stream = str(source), _existing_file(str(source))
    try:
        with Image.open(stream) as img:
            img.load()
            upright = ImageOps.exif_transpose(img)
            return _with_alpha(upright) if keep_alpha and _has_alpha(upright) else _to_rgb(upright)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise _not_an_image(name, e) from e


def _existing_file(source: str) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        raise InputError(f"'{source}' is a directory, not an image", "pass image files, e.g. dir/*.png")
    if not path.exists():
        raise InputError(f"image not found: '{source}'", "check the path")
    return path


def _read_stdin() -> bytes:
    data = sys.stdin.buffer.read()
    if not data:
        raise InputError("no image data on stdin", "pipe an image in, e.g. `cat page.png | mix ... -`")
    return data


def _not_an_image(name: str, exc: BaseException) -> InputError:
    reason = "not an image or an unsupported format" if isinstance(exc, UnidentifiedImageError) else str(exc)
    return InputError(f"cannot read image '{name}': {reason}", "pass a PNG, JPEG, WebP, BMP, TIFF or GIF file")


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def _with_alpha(img: Image.Image) -> Image.Image:
    """LA stays LA; every other transparent mode becomes RGBA."""
    return img.copy() if img.mode in ("RGBA", "LA") else img.convert("RGBA")


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with any alpha (RGBA, LA, palette transparency) composited over white."""
    if _has_alpha(img):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: PIL's RGB conversion clips instead of scaling.
        return img.point(lambda v: v / 256).convert("L").convert("RGB")
    return img.convert("RGB")
