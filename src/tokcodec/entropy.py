"""Entropy coding with constriction: one range-coded stream per file.

Coder 1: constriction.stream.queue.RangeEncoder, model family Categorical(perfect=False),
tables passed as C-contiguous float64 arrays of integer counts (so constriction only ever
sees exact integers), symbols int32, compressed words stored as u32 little-endian.
Binary decisions (the edge block map) use adaptive counts from a context.
"""

from __future__ import annotations

import constriction
import numpy as np

CODER_ID = 1
_FAMILY = constriction.stream.model.Categorical(perfect=False)


def _table(counts) -> np.ndarray:
    arr = counts.numpy() if hasattr(counts, "numpy") else counts
    return np.ascontiguousarray(arr, dtype=np.float64)


class BinaryContexts:
    """Adaptive binary model: per context, counts of zeros and ones (start 1, 1)."""

    def __init__(self, n_contexts: int):
        self.c = np.ones((n_contexts, 2), dtype=np.int64)

    def table(self, ctx: int) -> np.ndarray:
        return self.c[ctx:ctx + 1].astype(np.float64)

    def update(self, ctx: int, bit: int) -> None:
        self.c[ctx, bit] += 2
        if self.c[ctx].sum() > 1024:
            self.c[ctx] = (self.c[ctx] + 1) // 2


class Encoder:
    def __init__(self):
        self._enc = constriction.stream.queue.RangeEncoder()

    def encode(self, symbols, counts) -> None:
        """Symbols (N,) with integer count tables (N,K)."""
        sym = np.ascontiguousarray(np.asarray(symbols), dtype=np.int32)
        if sym.size:
            self._enc.encode(sym, _FAMILY, _table(counts))

    def encode_bit(self, bit: int, model: BinaryContexts, ctx: int) -> None:
        self._enc.encode(np.array([bit], dtype=np.int32), _FAMILY, model.table(ctx))
        model.update(ctx, bit)

    def finish(self) -> bytes:
        return self._enc.get_compressed().astype("<u4").tobytes()


class DecodeError(ValueError):
    pass


class Decoder:
    def __init__(self, payload: bytes):
        words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        self._dec = constriction.stream.queue.RangeDecoder(words)

    def decode(self, counts) -> np.ndarray:
        table = _table(counts)
        if table.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        try:
            return self._dec.decode(_FAMILY, table).astype(np.int64)
        except (ValueError, KeyError, AssertionError) as e:  # damaged stream
            raise DecodeError(f"range decoder failed: {e}") from None

    def decode_bit(self, model: BinaryContexts, ctx: int) -> int:
        bit = int(self.decode(model.table(ctx))[0])
        model.update(ctx, bit)
        return bit


def information_bits(symbols, counts) -> float:
    """Ideal code length in bits of symbols under the integer count tables."""
    t = _table(counts)
    p = t[np.arange(t.shape[0]), np.asarray(symbols)] / t.sum(1)
    return float(-np.log2(p).sum())


def sample(counts, rng: np.random.Generator) -> np.ndarray:
    """Draw one symbol per row from integer count tables with a device-independent RNG."""
    c = np.asarray(counts.numpy() if hasattr(counts, "numpy") else counts, dtype=np.int64)
    cum = np.cumsum(c, axis=1)
    u = rng.integers(0, cum[:, -1])
    return (cum <= u[:, None]).sum(1).astype(np.int64)
