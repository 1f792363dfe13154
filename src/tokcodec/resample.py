"""Coding at a reduced scale: extension 3 (display size) and its resampling (spec/FORMAT.md
section 12).

At the lowest rates a token grid over the whole photo is too many tokens for the bytes: each
has to come from a 16-word codebook, or most are dropped and generated. The same bytes spent on
a smaller copy of the photo buy a richer codebook with every token kept, and the decoder's
upsampling then costs less than the coarse tokens did. (VVC at these rates wins the same way:
at 0.005 bpp on Kodak its best file is a quarter-size one for 22 of 24 images.)

A file coded at a reduced scale is an ordinary file of the small image (its header's width and
height, token grid, correction) plus extension 3, which holds the size to show it at. The
decoder upsamples its output to that size with a fixed separable cubic filter (Keys, a = -1/2),
defined exactly here so that another decoder gives the same pixels within the tolerance of
section 8.6. The encoder downsamples with Lanczos (its own choice; not part of the format).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from . import container
from .container import DISPLAY_TAG, Container, display_size

# Coded scales rate control may try, as fractions of the photo's width and height. The smallest
# (1/4) is what VVC picks at 0.005 bpp; steps of 1/8 fill the gaps between the token settings
# of neighbouring scales (docs/scale.md).
SCALES = (0.25, 0.3125, 0.375, 0.4375, 0.5, 0.625, 0.75, 0.875, 1.0)
MIN_CODED_SIDE = 32  # a coded image is never smaller than this on either side (nor than the photo)
A = -0.5  # Keys' cubic, as Catmull-Rom


def coded_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """Width and height of the coded image for a photo of `size` at `scale` (never below
    MIN_CODED_SIDE unless the photo is, never above the photo)."""
    return tuple(min(n, max(min(n, MIN_CODED_SIDE), round(n * scale))) for n in size)


def downscale(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The encoder's small copy of the photo (Lanczos, antialiased)."""
    return image if image.size == tuple(size) else image.convert("RGB").resize(size, Image.LANCZOS)


def _kernel(t: np.ndarray) -> np.ndarray:
    t = np.abs(t)
    return np.where(t <= 1, ((A + 2) * t - (A + 3)) * t * t + 1,
                    np.where(t < 2, ((A * t - 5 * A) * t + 8 * A) * t - 4 * A, 0.0))


def taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of n_out output samples, the 4 input indices (clamped to 0..n_in-1) and their
    weights (float64): output sample x sits at c = (x + 1/2) n_in / n_out - 1/2 in input
    coordinates, and input i = floor(c) - 1 .. floor(c) + 2 weighs k(c - i)."""
    c = (np.arange(n_out, dtype=np.float64) + 0.5) * n_in / n_out - 0.5
    base = np.floor(c).astype(np.int64)
    i = base[:, None] + np.arange(-1, 3)[None]
    return np.clip(i, 0, n_in - 1), _kernel(c[:, None] - i)


UPSAMPLE_BAND_VALUES = 1 << 22  # float32 values per band of output rows (16 MB)


def upsample(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Decoded uint8 pixels (h, w, 3) to `size` (width, height): rows, then columns, in
    float32, each result rounded (floor(x + 1/2)) and clipped to 0..255 once at the end."""
    w_out, h_out = size
    h, w = rgb.shape[:2]
    if (w, h) == (w_out, h_out):
        return rgb
    ri, rw = taps(h, h_out)
    ci, cw = taps(w, w_out)
    rw, cw = rw.astype(np.float32), cw.astype(np.float32)
    out = np.empty((h_out, w_out, rgb.shape[2]), dtype=np.uint8)
    # in bands of output rows, so that the float32 intermediates stay small at photo sizes
    # (a 12-MP output held 0.5 GB of them); each value is the same sum in the same order
    step = max(1, UPSAMPLE_BAND_VALUES // (w_out * rgb.shape[2]))
    for r0 in range(0, h_out, step):
        r1 = min(h_out, r0 + step)
        rows = np.zeros((r1 - r0, w, rgb.shape[2]), dtype=np.float32)
        for k in range(4):  # vertical pass
            rows += rw[r0:r1, k, None, None] * rgb[ri[r0:r1, k]].astype(np.float32)
        acc = np.zeros((r1 - r0, w_out, rgb.shape[2]), dtype=np.float32)
        for k in range(4):  # horizontal pass
            acc += cw[None, :, k, None] * rows[:, ci[:, k]]
        out[r0:r1] = np.clip(np.floor(acc + 0.5), 0, 255)
    return out


def coded_fraction(hd: container.Header) -> float:
    """How much smaller the coded image is than the shown one (the smaller of the two sides'
    ratios; 1.0 for a file without a display size)."""
    size = display_size(hd)
    return 1.0 if size is None else min(hd.width / size[0], hd.height / size[1])


def tokens_at(tokens: np.ndarray, coded: tuple[int, int], shown: tuple[int, int]) -> np.ndarray:
    """The token grid of the coded image resampled (nearest) to the grid of the shown size
    (section 12.2, realism): shown token row i takes coded token row
    min(floor((16 i + 8) * coded_height / shown_height / 16), rows - 1); columns alike."""
    (w, h), (W, H) = coded, shown
    gh, gw = container.grid_size(W, H)
    rows = np.minimum((np.arange(gh) * 16 + 8) * h // (16 * H), tokens.shape[0] - 1)
    cols = np.minimum((np.arange(gw) * 16 + 8) * w // (16 * W), tokens.shape[1] - 1)
    return np.ascontiguousarray(tokens[rows][:, cols])


def show(img: Image.Image, c: Container) -> Image.Image:
    """A decoded (and corrected) image at the size its file says to show it at."""
    size = display_size(c.header)
    return img if size is None else Image.fromarray(upsample(np.asarray(img), size))


def with_display(data: bytes, size: tuple[int, int] | None) -> bytes:
    """A packed file with extension 3 set to `size` (None, or the coded size: removed)."""
    hd = container.unpack_own(data).header
    keep = size is not None and tuple(size) != (hd.width, hd.height)
    return container.with_extension(data, DISPLAY_TAG, container.display_body(size) if keep else None)


def extension_bytes(size: tuple[int, int]) -> int:
    """Bytes extension 3 adds to a file: tag, length and body."""
    return container.extension_bytes(DISPLAY_TAG, container.display_body(size))
