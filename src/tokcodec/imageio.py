"""Reading input images and writing decoded ones (Pillow), with clear errors.

Inputs: EXIF orientation is applied; every Pillow mode becomes 8-bit RGB (alpha is composited
on white and dropped: .tkc has no alpha channel; 16-bit inputs are scaled to 8 bits; CMYK and
palette images are converted). ICC profiles are not interpreted: pixel values are taken as sRGB.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .container import DEFAULT_MAX_PIXELS


class ImageError(ValueError):
    pass


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(np.round(arr / top * 255), 0, 255).astype(np.uint8))
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "RGB" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return im.convert("RGB")


def load_image(data: bytes | str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Bytes or a path -> upright 8-bit RGB image. Raises ImageError with a one-line reason."""
    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    name = "input" if isinstance(data, (bytes, bytearray)) else str(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(src) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageError(f"{name} is {w}x{h} = {w * h} pixels, over the limit of "
                                     f"{max_pixels}; raise it with --max-pixels")
                im.load()
                im = ImageOps.exif_transpose(im)
                return _to_rgb(im)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name} is too large for Pillow's decompression-bomb limit; "
                         "raise it with --max-pixels if you trust the file") from None
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name} is not an image Pillow can read ({e})") from None


FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP",
           ".tif": "TIFF", ".tiff": "TIFF", ".ppm": "PPM", ".gif": "GIF"}


def format_for(path: str | os.PathLike | None, default: str = "PNG") -> str:
    if path is None or str(path) == "-":
        return default
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise ImageError(f"cannot tell the image format from {str(path)!r}; use one of "
                         + ", ".join(sorted(FORMATS)))
    return FORMATS[ext]


def image_bytes(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    opts = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    im.save(buf, format=fmt, **opts)
    return buf.getvalue()


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write via a temporary file in the target folder, then rename: never a partial file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
