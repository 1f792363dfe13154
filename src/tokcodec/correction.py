"""Tone and colour correction: a few bytes of side information that pull the decoded image's
brightness and colours, averaged over cells of 32-128 pixels, to the original's.

At the lowest rates the tokens carry a 16- or 64-word codebook and many are generated, so
large areas come back with the wrong tone or hue (a red macaw turns orange). The encoder
decodes its own file (fidelity decoder, temperature 0), averages the difference to the
original in YCbCr over a coarse grid, quantises it and codes it with the range coder; the
decoder adds the grid, interpolated bilinearly, to its pixels. It also marks grey images, whose
decoded pixels are then made grey. The data lives in ancillary extension 2 of the container
(spec/FORMAT.md section 11): a reader that ignores it still decodes the file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import container, entropy
from .container import Container
from .errors import FormatError

TAG = 2                    # ancillary (even) extension tag
VALUE_MAX = 63             # quantised cell values lie in [-63, 63]
ERR_MAX = 126              # coded differences (value - prediction) in [-126, 126]
COUNT_ZERO = 4096          # count of difference 0; counts decay geometrically from it
CODER_ID = 2               # the extension's range coder uses coder 2's cumulative tables
FLAG_GREY = 1

# BT.601 full-range YCbCr (JPEG's), on 0..255 values
RGB_TO_YCC = np.array([[0.299, 0.587, 0.114],
                       [-0.168736, -0.331264, 0.5],
                       [0.5, -0.418688, -0.081312]])
YCC_TO_RGB = np.array([[1.0, 0.0, 1.402],
                       [1.0, -0.344136, -0.714136],
                       [1.0, 1.772, 0.0]])


@dataclass
class Correction:
    cell: int                      # cell side in tokens (16 px each); 0: no grid
    grey: bool
    steps: tuple[int, int] = (0, 0)  # quantiser step of Y and of Cb/Cr, in 8-bit levels
    values: np.ndarray | None = None  # (channels, gh, gw) int64; 1 channel (Y) for grey images

    @property
    def channels(self) -> int:
        return 1 if self.grey else 3


def grid_shape(width: int, height: int, cell: int) -> tuple[int, int]:
    f = 16 * cell
    return -(-height // f), -(-width // f)


def count_table(decay: int) -> np.ndarray:
    """Counts of the differences -126..126 (index d + 126): a_0 = 4096, a_(n+1) =
    floor(a_n * decay / 256), count(d) = max(1, a_|d|)."""
    a = np.zeros(ERR_MAX + 1, dtype=np.int64)
    a[0] = COUNT_ZERO
    for n in range(ERR_MAX):
        a[n + 1] = (a[n] * decay) >> 8
    a = np.maximum(a, 1)
    return np.concatenate([a[:0:-1], a])


def predict(q: np.ndarray, i: int, j: int) -> int:
    """Prediction of cell (i, j) from its already coded neighbours: (left + up) >> 1, where a
    missing left is the up value, a missing up the left value, and the first cell 0."""
    left = q[i, j - 1] if j else (q[i - 1, j] if i else 0)
    up = q[i - 1, j] if i else left
    return (left + up) >> 1


def predictions(q: np.ndarray) -> np.ndarray:
    """`predict` at every cell of a known grid."""
    p = np.zeros_like(q)
    for i in range(q.shape[0]):
        for j in range(q.shape[1]):
            p[i, j] = predict(q, i, j)
    return p


_LOG2P: np.ndarray | None = None


def _best_decay(diff: np.ndarray) -> tuple[int, float]:
    """The decay (1..255) whose table codes `diff` in the fewest bits, and those bits."""
    global _LOG2P
    if _LOG2P is None:
        t = np.stack([count_table(d) for d in range(1, 256)]).astype(np.float64)
        _LOG2P = np.log2(t / t.sum(1, keepdims=True))
    hist = np.bincount(diff + ERR_MAX, minlength=2 * ERR_MAX + 1)
    bits = -(_LOG2P @ hist)
    d = int(np.argmin(bits))
    return d + 1, float(bits[d])


def pack(c: Correction) -> bytes:
    """Extension body: cell u8, flags u8 (bit 0 grey, bit 1 + ch: channel ch is predicted); with
    a grid: step_y u8, step_c u8, one decay u8 per channel, then the range coder's words."""
    if not c.cell:
        return bytes([0, FLAG_GREY if c.grey else 0])
    flags, decays, plans = (FLAG_GREY if c.grey else 0), [], []
    for ch in range(c.channels):
        q = c.values[ch]
        # each channel is coded as it is or as differences to predictions, whichever is smaller
        options = [(d, predicted, *_best_decay(d))
                   for d, predicted in ((q.ravel(), False), ((q - predictions(q)).ravel(), True))]
        diff, predicted, decay, _ = min(options, key=lambda o: o[3])
        flags |= (2 << ch) if predicted else 0
        decays.append(decay)
        plans.append((diff, decay))
    enc = entropy.Encoder(CODER_ID)
    for diff, decay in plans:
        enc.encode(diff + ERR_MAX, np.broadcast_to(count_table(decay), (diff.size, 2 * ERR_MAX + 1)))
    return bytes([c.cell, flags, c.steps[0], c.steps[1], *decays]) + enc.finish()


def unpack(body: bytes, width: int, height: int) -> Correction:
    def bad(why: str) -> FormatError:
        return FormatError(f"tone and colour correction (extension {TAG}) is damaged: {why}")
    if len(body) < 2:
        raise bad("shorter than 2 bytes")
    cell, flags = body[0], body[1]
    grey = bool(flags & FLAG_GREY)
    if flags >> 4:
        raise bad("unknown flags")
    if not cell:
        if len(body) != 2 or flags & 0b1110:
            raise bad("bytes or flags after an empty grid")
        return Correction(0, grey)
    n = 1 if grey else 3
    if len(body) < 4 + n or (len(body) - 4 - n) % 4:
        raise bad("wrong length")
    steps = (body[2], body[3])
    decays = list(body[4:4 + n])
    if 0 in steps or 0 in decays:
        raise bad("zero step or decay")
    gh, gw = grid_shape(width, height, cell)
    dec = entropy.Decoder(body[4 + n:], CODER_ID)
    values = np.zeros((n, gh, gw), dtype=np.int64)
    try:
        for ch in range(n):
            diff = dec.decode(np.broadcast_to(count_table(decays[ch]), (gh * gw, 2 * ERR_MAX + 1)))
            diff = (diff - ERR_MAX).reshape(gh, gw)
            if flags & (2 << ch):  # undo the prediction in raster order
                q = np.zeros((gh, gw), dtype=np.int64)
                for i in range(gh):
                    for j in range(gw):
                        q[i, j] = diff[i, j] + predict(q, i, j)
            else:
                q = diff
            if np.abs(q).max() > VALUE_MAX:
                raise bad(f"a cell value is outside -{VALUE_MAX}..{VALUE_MAX}")
            values[ch] = q
        dec.finish()
    except entropy.DecodeError as e:
        raise bad(str(e)) from None
    return Correction(cell, grey, steps, values)


def block_sums(original: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    """Sums of original - decoded over each 16x16-pixel block (blocks at the right and bottom
    edges hold fewer pixels): (ceil(H/16), ceil(W/16), 3) int64, exact (uint8 (H, W, 3) images).
    Every grid cell is a whole number of these blocks, so the cells' means of every candidate
    grid come from one pass over the pixels (`cell_means`). Worked in bands of 256 rows (a
    12-MP photo's whole difference and its int32 copy in the reduction took 200 MB at once)."""
    h, w, c = original.shape
    out = []
    for y in range(0, h, 256):  # whole 16-px blocks per band
        d = original[y:y + 256].astype(np.int16)
        d -= decoded[y:y + 256]
        rows = np.add.reduceat(d.reshape(d.shape[0], w * c), np.arange(0, d.shape[0], 16), axis=0, dtype=np.int32)
        out.append(np.add.reduceat(rows.reshape(-1, w, c), np.arange(0, w, 16), axis=1, dtype=np.int64))
    return np.concatenate(out)


def cell_means(sums: np.ndarray, cell: int, size: tuple[int, int]) -> np.ndarray:
    """Means in YCbCr of original - decoded over each grid cell of `cell` tokens (16-px blocks)
    of an image of `size` (W, H), from its `block_sums` -> (C, gh, gw) float64 (cells at the
    right and bottom edges hold fewer pixels). The sums are exact integers, then divided by
    each cell's pixel count and converted to YCbCr (linear: the means of the converted
    differences)."""
    w, h = size
    f = 16 * cell
    cells = np.add.reduceat(np.add.reduceat(sums, np.arange(0, sums.shape[0], cell), axis=0),
                            np.arange(0, sums.shape[1], cell), axis=1)
    rows, cols = np.arange(0, h, f), np.arange(0, w, f)
    n = np.outer(np.minimum(rows + f, h) - rows, np.minimum(cols + f, w) - cols)
    return ((cells / n[..., None]) @ RGB_TO_YCC.T).transpose(2, 0, 1)


def fit(original: np.ndarray, decoded: np.ndarray, cell: int, steps: tuple[int, int],
        grey: bool = False, sums: np.ndarray | None = None, means: np.ndarray | None = None) -> Correction:
    """Quantised cell means of original - decoded in YCbCr (uint8 (H, W, 3) images); `sums`:
    their `block_sums`, `means`: its `cell_means` for this cell, when already known (rate
    control fits every quantiser step of a cell from one)."""
    if means is None:
        h, w, _ = original.shape
        means = cell_means(block_sums(original, decoded) if sums is None else sums, cell, (w, h))
    means = means[:1 if grey else 3]
    step = np.array([steps[0], steps[1], steps[1]], dtype=np.float64)[:len(means), None, None]
    q = np.clip(np.round(means / step), -VALUE_MAX, VALUE_MAX).astype(np.int64)
    return Correction(cell, grey, steps, q)


def interpolation(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) bilinear weights, sample centres aligned: output i reads the input at
    s = max(0, (i + 0.5) * n_in / n_out - 0.5), between floor(s) and min(floor(s) + 1, n_in - 1)."""
    s = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = np.floor(s).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    a = s - i0
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), i0), 1 - a)
    np.add.at(m, (np.arange(n_out), i1), a)
    return m


def _grid_rgb(c: Correction) -> np.ndarray:
    """The dequantised grid in RGB, (3, gh, gw) float64."""
    step = np.array([c.steps[0], c.steps[1], c.steps[1]], dtype=np.float64)[:c.channels]
    g = c.values * step[:, None, None]
    if c.grey:
        g = np.concatenate([g, np.zeros((2,) + g.shape[1:])])
    return np.tensordot(YCC_TO_RGB, g, axes=(1, 0))


def offsets(c: Correction, width: int, height: int, rows: slice = slice(None)) -> np.ndarray:
    """The correction in RGB, (H, W, 3) float32: the dequantised grid, interpolated (only the
    image rows `rows`)."""
    rgb = _grid_rgb(c).astype(np.float32)
    gh, gw = rgb.shape[1:]
    ay, ax = interpolation(height, gh).astype(np.float32)[rows], interpolation(width, gw).astype(np.float32)
    return np.stack([ay @ rgb[k] @ ax.T for k in range(3)], -1)


def reduced_offsets(c: Correction, width: int, height: int, factor: int) -> np.ndarray:
    """The means of `offsets` over factor x factor pixel blocks (whole blocks from the top-left
    only), (H // factor, W // factor, 3) float64: the interpolation is linear in the grid, so
    these are its weights averaged over each block."""
    rgb = _grid_rgb(c)
    gh, gw = rgb.shape[1:]

    def reduced(n: int, g: int) -> np.ndarray:
        m = n // factor
        return interpolation(n, g)[:m * factor].reshape(m, factor, g).mean(1)
    ay, ax = reduced(height, gh), reduced(width, gw)
    return np.stack([ay @ rgb[k] @ ax.T for k in range(3)], -1)


BAND_ROWS = 512  # rows corrected at a time: bounded memory at photo sizes


def apply(decoded: np.ndarray, c: Correction) -> np.ndarray:
    """Corrected uint8 (H, W, 3) pixels: decoded + offsets, rounded and clipped; grey images
    get their luma (0.299 R + 0.587 G + 0.114 B, rounded) in all three channels. Works in
    bands of BAND_ROWS rows (each pixel's arithmetic is the same)."""
    h, w, _ = decoded.shape
    if h <= BAND_ROWS:
        return _apply_rows(decoded, c, slice(None), h)
    out = np.empty_like(decoded)
    for r0 in range(0, h, BAND_ROWS):
        rows = slice(r0, min(h, r0 + BAND_ROWS))
        out[rows] = _apply_rows(decoded[rows], c, rows, h)
    return out


def _apply_rows(decoded: np.ndarray, c: Correction, rows: slice, height: int) -> np.ndarray:
    out = decoded.astype(np.float32)
    if c.cell:
        out = out + offsets(c, decoded.shape[1], height, rows)
    if c.grey:
        out = (out @ RGB_TO_YCC[0].astype(np.float32))[..., None].repeat(3, -1)
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def is_grey(rgb: np.ndarray) -> bool:
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


# ------------------------------------------------------------------ in the container
def read_correction(c: Container) -> "Correction | None":
    if c.header.minor < 1:  # tag 2 is defined from 1.1 on; in a 1.0 file it is an unknown ancillary one
        return None
    bodies = [body for tag, body in c.header.extensions if tag == TAG]
    if len(bodies) > 1:
        raise FormatError(f"file has {len(bodies)} tone and colour corrections (extension "
                          f"{TAG}); at most one is allowed")
    return unpack(bodies[0], c.header.width, c.header.height) if bodies else None


def correction_of(data: bytes) -> "Correction | None":
    """The correction of a file this process made (`read_correction` of `container.unpack_own`)."""
    return read_correction(container.unpack_own(data))


def extension_bytes(corr: "Correction") -> int:
    """Bytes the correction adds to a file that has none: tag, length and body."""
    return container.extension_bytes(TAG, pack(corr))


def with_correction(data: bytes, corr: "Correction") -> bytes:
    """A packed file with its tone and colour correction extension set to `corr` (tag 2 is
    defined from minor 1 on)."""
    return container.with_extension(data, TAG, pack(corr), minor=1)
