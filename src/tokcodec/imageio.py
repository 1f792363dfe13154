"""Reading input images and writing decoded ones (Pillow), with clear errors.

Inputs: EXIF orientation is applied; every Pillow mode becomes 8-bit RGB (alpha is composited
on white and dropped: .tkc has no alpha channel; 16-bit inputs are scaled to 8 bits; CMYK and
palette images are converted). ICC profiles are not interpreted: pixel values are taken as sRGB.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .container import DEFAULT_MAX_PIXELS, looks_like_tkc


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


def load_image(data: bytes | str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
               name: str | None = None) -> Image.Image:
    """Bytes or a path -> upright 8-bit RGB image. Raises ImageError with a one-line reason
    that names the input (`name`, default: the path, or "input" for bytes)."""
    in_memory = isinstance(data, (bytes, bytearray))
    src = io.BytesIO(data) if in_memory else data
    name = name or ("input" if in_memory else str(data))
    if in_memory and not data:
        raise ImageError(f"{name} is empty, not an image")
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
    except UnidentifiedImageError:  # its message names the BytesIO object, not the file
        if in_memory and looks_like_tkc(data):
            raise ImageError(f"{name} is a .tkc file, not an image (did you mean `tokc decode`?)") from None
        raise ImageError(f"{name} is not an image Pillow can read (unknown format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        why = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the data", str(e))
        raise ImageError(f"{name} is not an image Pillow can read ({why})") from None


def image_format(data: bytes) -> str | None:
    """The format name of image data Pillow recognises ("PNG", "TIFF", ...), else None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return im.format or "image"
    except Exception:  # noqa: BLE001 - anything Pillow cannot open is not an image here
        return None


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


def new_file_mode(path: str | os.PathLike) -> int:
    """Permissions for a file written at `path`: those of the file it replaces (as cp keeps
    them), else 0o666 less the umask (as any new file)."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def check_writable_folder(folder: str | os.PathLike) -> None:
    """Raise ImageError unless `folder` exists and a file can be created in it (what
    atomic_write will do), so that a bad output place fails before any work."""
    folder = Path(folder)
    if not folder.exists():
        raise ImageError(f"folder {folder} does not exist")
    if not folder.is_dir():
        raise ImageError(f"{folder} is not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tokc-check.", suffix=".part", dir=folder)
    except OSError as e:
        raise ImageError(f"cannot write into folder {folder}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(tmp)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write via a temporary file in the target folder, then rename: never a partial file.
    The file gets `new_file_mode` (mkstemp alone would leave it 0600)."""
    path = Path(path)
    mode = new_file_mode(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as e:  # its message would name the temporary file
        raise OSError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):  # "No space left on device", ... without the temporary name
            raise OSError(f"cannot write {path}: {e.strerror or e}") from None
        raise
