"""Entropy coding: one range-coded stream per file (spec/FORMAT.md section 4).

The range coder is constriction's (0.5.x) RangeEncoder/RangeDecoder: 32-bit words, 64-bit
state, 24-bit probabilities, model family Categorical(perfect=False), symbols int32, words
stored u32 little-endian. Every table is a row of integer counts; the coder id fixes how a
row becomes the 24-bit cumulative table (CDF) the coder works with (`quantized_cdf`):

  coder 1 (read only; files of tokc up to weights v2): constriction's own quantisation of the
      counts as float64: cdf[i] = trunc(S_i * (2**24 - K) / T) + i with one binary64 division
      and one binary64 product (S_i = sum of the counts before i, T = total).
  coder 2 (written): the same formula in exact integers, floor(S_i * (2**24 - K) / T) + i.
      constriction is given the row diff(cdf) - 1, whose total is exactly 2**24 - K, so its
      scale factor is exactly 1.0 and its quantisation reproduces cdf without rounding.

The decoder also follows the coder's integer state (lower, range, renormalisations) so that it
refuses a payload that ends before the last symbol, or that holds words after the encoder's
final ones (`Decoder.finish`). Binary decisions (the edge block map) use adaptive counts.
"""

from __future__ import annotations

import math

import constriction
import numpy as np

from .errors import FormatError

CODER_ID = 2          # what tokc writes
CODERS = (1, 2)       # what tokc reads
PRECISION = 24        # probabilities are integers out of 2**24
_MASK64 = (1 << 64) - 1
_FAMILY = constriction.stream.model.Categorical(perfect=False)


def _counts(counts) -> np.ndarray:
    arr = counts.numpy() if hasattr(counts, "numpy") else np.asarray(counts)
    return np.ascontiguousarray(arr, dtype=np.int64).reshape(-1, arr.shape[-1])


def quantized_cdf(counts, coder_id: int) -> np.ndarray:
    """Integer count rows (N, K), each count >= 1 -> cumulative tables (N, K+1) of int64 with
    cdf[:, 0] = 0 and cdf[:, K] = 2**24: symbol i owns [cdf[i], cdf[i+1])."""
    c = _counts(counts)
    n, k = c.shape
    cum = np.zeros((n, k + 1), dtype=np.int64)
    np.cumsum(c, axis=1, out=cum[:, 1:])
    total = cum[:, -1:]
    free = (1 << PRECISION) - k
    if coder_id == 1:  # binary64: one correctly rounded division, one correctly rounded product
        scale = np.float64(free) / total.astype(np.float64)
        left = (cum.astype(np.float64) * scale).astype(np.int64)
    elif coder_id == 2:
        left = cum * free // total
    else:
        raise ValueError(f"unknown coder id {coder_id}")
    cdf = left + np.arange(k + 1, dtype=np.int64)
    cdf[:, -1] = 1 << PRECISION
    return cdf


def _table(counts, coder_id: int, cdf: np.ndarray | None = None) -> np.ndarray:
    """The float64 rows handed to constriction for a coder (`cdf`: quantized_cdf of the counts,
    if the caller has it already). One row broadcast over many (np.broadcast_to: the tone and
    colour grid's fixed table) is converted once and repeated."""
    arr = counts if isinstance(counts, np.ndarray) else None
    if cdf is None and arr is not None and arr.ndim == 2 and arr.shape[0] > 1 and arr.strides[0] == 0:
        return np.ascontiguousarray(np.broadcast_to(_table(arr[:1], coder_id), arr.shape))
    if coder_id == 1:
        return np.ascontiguousarray(_counts(counts), dtype=np.float64)
    cdf = quantized_cdf(counts, coder_id) if cdf is None else cdf
    return np.ascontiguousarray(np.diff(cdf, axis=1) - 1, dtype=np.float64)


def _min_bits(cdf: np.ndarray) -> float:
    """Lower bound on the bits the rows of `cdf` take from a stream (see min_bits)."""
    widest = np.diff(cdf, axis=1).max(1)
    return max(0.0, float((PRECISION - np.log2(widest)).sum()) * (1 - 1e-9) - 1e-6)


def adapt(c, bit: int) -> None:
    """The adaptive binary model's update of one context's counts `c` ([n0, n1], a list or an
    array row, in place) after coding `bit` (spec section 4.4)."""
    c[bit] += 2
    if c[0] + c[1] > 1024:
        c[0], c[1] = (c[0] + 1) // 2, (c[1] + 1) // 2


class BinaryContexts:
    """Adaptive binary model: per context, counts of zeros and ones (start 1, 1)."""

    def __init__(self, n_contexts: int):
        self.c = np.ones((n_contexts, 2), dtype=np.int64)

    def table(self, ctx: int) -> np.ndarray:
        return self.c[ctx:ctx + 1].copy()

    def update(self, ctx: int, bit: int) -> None:
        adapt(self.c[ctx], bit)


class Encoder:
    def __init__(self, coder_id: int | None = None):
        self.coder_id = CODER_ID if coder_id is None else coder_id
        if self.coder_id not in CODERS:
            raise ValueError(f"unknown coder id {self.coder_id}")
        self._enc = constriction.stream.queue.RangeEncoder()

    def encode(self, symbols, counts) -> None:
        """Symbols (N,) with integer count tables (N,K)."""
        sym = np.ascontiguousarray(np.asarray(symbols), dtype=np.int32)
        if sym.size:
            self._enc.encode(sym, _FAMILY, _table(counts, self.coder_id))

    def encode_bit(self, bit: int, model: BinaryContexts, ctx: int) -> None:
        self.encode(np.array([bit]), model.table(ctx))
        model.update(ctx, bit)

    def finish(self) -> bytes:
        return self._enc.get_compressed().astype("<u4").tobytes()


class DecodeError(FormatError):
    """The payload is damaged: it ends early, or holds words after the coder's last one."""


class Decoder:
    """Decodes a payload; a file's coder id is in its header (the default pairs with Encoder())."""

    def __init__(self, payload: bytes, coder_id: int = CODER_ID):
        if coder_id not in CODERS:
            raise DecodeError(f"unknown coder id {coder_id}")
        self.coder_id = coder_id
        self._words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        self._dec = constriction.stream.queue.RangeDecoder(self._words)
        # the coder's state, followed in integers (spec section 4.2)
        self._lower, self._range, self._renorms, self._symbols = 0, _MASK64, 0, 0

    def decode(self, counts, room_after: float | None = None, what: str = "") -> np.ndarray:
        """Symbols coded with these count rows. With `room_after` (a lower bound on the bits of
        what follows them), the payload must first have room for these symbols at their most
        likely values (min_bits) plus that, else DecodeError names `what`."""
        c = _counts(counts)
        if c.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        cdf = quantized_cdf(c, self.coder_id)
        if room_after is not None:
            self.require(_min_bits(cdf) + room_after, what)
        sym = self._constriction_decode(_table(c, self.coder_id, cdf))
        rows = np.arange(len(sym))
        self._follow(cdf[rows, sym].tolist(), cdf[rows, sym + 1].tolist())
        return sym

    def _constriction_decode(self, table: np.ndarray) -> np.ndarray:
        try:
            return self._dec.decode(_FAMILY, table).astype(np.int64)
        except (ValueError, KeyError, AssertionError):  # damaged stream
            raise DecodeError("the payload is not a valid range-coder stream "
                              "(its words point outside every symbol's interval)") from None

    def _follow(self, lefts: list[int], rights: list[int]) -> None:
        """Advance the followed coder state over symbols with these CDF intervals."""
        lower, rng, renorms = self._lower, self._range, self._renorms
        for left, right in zip(lefts, rights):
            scale = rng >> PRECISION
            lower = (lower + scale * left) & _MASK64
            rng = scale * (right - left)
            if rng < 1 << 32:
                lower, rng, renorms = (lower << 32) & _MASK64, rng << 32, renorms + 1
        self._lower, self._range, self._renorms = lower, rng, renorms
        self._symbols += len(lefts)
        # after R renormalisations the decoder has read words 0 .. R+1; one word of look-ahead
        # past the end is the coder's own (read as 0), a second means the payload is cut short
        if renorms >= len(self._words):
            raise DecodeError("payload ends before the last symbol (file truncated or damaged)")

    def capacity_bits(self) -> float:
        """Information (bits, under the coder's tables) that the symbols still to be decoded can
        carry at most, if the payload is valid. The range only shrinks by each symbol's
        probability (or less, by truncation) between renormalisations, which multiply it by
        2**32; a valid stream of W words renormalises at most W - 1 times in all, and its final
        range is >= 2**32. A negative value means the payload has already run out."""
        return math.log2(self._range) - 32 + 32 * (len(self._words) - 1 - self._renorms)

    def require(self, bits: float, what: str) -> None:
        """Refuse the payload when `bits`, a lower bound on the information of what is still to
        be decoded, cannot fit in what is left of it."""
        if bits > self.capacity_bits():
            raise DecodeError(f"payload is too short for {what} (file truncated or damaged)")

    def decode_bit(self, model: BinaryContexts, ctx: int) -> int:
        """One adaptive binary decision. Coder 2's table of counts [n0, n1] is
        cdf = [0, floor(n0 (2**24 - 2) / (n0 + n1)) + 1, 2**24] (`quantized_cdf`), made here in
        plain integers: a 12-MP photo's block map is 11,520 such calls."""
        if self.coder_id != 2:
            bit = int(self.decode(model.table(ctx))[0])
        else:
            n0, n1 = int(model.c[ctx, 0]), int(model.c[ctx, 1])
            mid = n0 * ((1 << PRECISION) - 2) // (n0 + n1) + 1
            bit = int(self._constriction_decode(np.array([[mid - 1, (1 << PRECISION) - mid - 1]], dtype=np.float64))[0])
            left, right = (0, mid) if bit == 0 else (mid, 1 << PRECISION)
            self._follow([left], [right])
        model.update(ctx, bit)
        return bit

    def finish(self) -> None:
        """Check that the payload ends exactly where the encoder's words end (section 4.3)."""
        n = len(self._words)
        if not self._symbols:
            if n:
                raise DecodeError(f"payload has {n} words but codes no symbol")
            return
        lower, rng, r = self._lower, self._range, self._renorms
        point_word = ((lower + (1 << 32) - 1) & _MASK64) >> 32
        upper_word = ((lower + rng) & _MASK64) >> 32
        want = r + 1 + (upper_word == point_word)
        word = (lambda i: int(self._words[i]) if i < n else 0)
        if n != want or word(r) != point_word or word(r + 1) != 0:
            raise DecodeError(f"payload has {n} words where the coder's stream ends after {want} "
                              "(extra or damaged words at its end)")


def min_bits(counts, coder_id: int) -> float:
    """A lower bound on the bits that symbols coded with these tables take from a stream: each
    symbol narrows the coder's range at least by its widest interval (section 4.2), so by
    log2(2**24 / widest). Rounded down by a small margin; used to refuse payloads too short."""
    c = _counts(counts)
    return _min_bits(quantized_cdf(c, coder_id)) if c.shape[0] else 0.0


def information_bits(symbols, counts) -> float:
    """Ideal code length in bits of symbols under the integer count tables."""
    t = _counts(counts).astype(np.float64)
    p = t[np.arange(t.shape[0]), np.asarray(symbols)] / t.sum(1)
    return float(-np.log2(p).sum())
