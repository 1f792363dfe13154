"""Random numbers for sampling dropped tokens at temperature > 0 (spec/FORMAT.md section 7).

Integer arithmetic only, so the same file, seed and temperature generate the same tokens with
any version of any library. The rule depends on the file's coder id:

  coder 2: SplitMix64, indexed by position. The token at flat grid index p (= i * w + j) uses
      x = mix64((seed + (p + 1) * 0x9E3779B97F4A7C15) mod 2**64)   (SplitMix64's output p)
      u = (x * total) >> 64                                       (uniform in [0, total))
  coder 1 (legacy): the numbers numpy 2.x's Generator(PCG64(seed)).integers(0, total) drew
      (SeedSequence, PCG64 XSL-RR, 32-bit Lemire rejection), re-implemented here so that they do
      not depend on numpy keeping that stream (numpy promises no such thing).

Both then pick the token by inverse CDF: the smallest i with counts[0] + ... + counts[i] > u.
"""

from __future__ import annotations

import numpy as np

GAMMA = 0x9E3779B97F4A7C15
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
SEED_MAX = (1 << 64) - 1
_M64 = (1 << 64) - 1


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= SEED_MAX:
        raise ValueError(f"seed must be an integer in 0..2**64-1, got {seed!r}")
    return int(seed)


def mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on uint64 arrays (arithmetic modulo 2**64)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    return z ^ (z >> np.uint64(31))


def splitmix64(seed: int, index: np.ndarray) -> np.ndarray:
    """Output number `index` (0-based) of SplitMix64 started at state `seed`, as uint64."""
    with np.errstate(over="ignore"):
        z = np.uint64(check_seed(seed)) + (np.asarray(index, dtype=np.uint64) + np.uint64(1)) * np.uint64(GAMMA)
        return mix64(z)


def below(x: np.ndarray, total: np.ndarray) -> np.ndarray:
    """floor(x * total / 2**64) for uint64 x and 1 <= total < 2**32, exactly, as int64."""
    x = np.asarray(x, dtype=np.uint64)
    t = np.asarray(total, dtype=np.uint64)
    if (t >= np.uint64(1 << 32)).any():
        raise ValueError("total must be below 2**32")
    hi, lo = x >> np.uint64(32), x & np.uint64(0xFFFFFFFF)
    return ((hi * t + ((lo * t) >> np.uint64(32))) >> np.uint64(32)).astype(np.int64)


def inverse_cdf(counts: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Per row, the smallest i with counts[0] + ... + counts[i] > u."""
    cum = np.cumsum(counts, axis=1)
    return (cum <= np.asarray(u)[:, None]).sum(1).astype(np.int64)


def sample_at(counts, positions, seed: int) -> np.ndarray:
    """Coder 2: one token per row of `counts` (N,K), the row for flat grid index positions[n]."""
    c = np.asarray(counts.numpy() if hasattr(counts, "numpy") else counts, dtype=np.int64)
    return inverse_cdf(c, below(splitmix64(seed, positions), c.sum(1)))


# --------------------------------------------------------------------------------------------
# Coder 1 (legacy): numpy's SeedSequence -> PCG64 -> Generator.integers(0, total), in integers.

_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_M32 = 0xFFFFFFFF
_PCG_MULT = 0x2360ED051FC65DA44385DF649FCCF645
_M128 = (1 << 128) - 1


def seed_sequence_state(seed: int, n_words: int = 8) -> list[int]:
    """numpy.random.SeedSequence(seed).generate_state(n_words, uint32), pool size 4."""
    entropy = []
    v = check_seed(seed)
    while True:  # the seed as 32-bit words, least significant first ([0] for 0)
        entropy.append(v & _M32)
        v >>= 32
        if not v:
            break
    const = _INIT_A

    def hashmix(value):
        nonlocal const
        value = (value ^ const) & _M32
        const = (const * _MULT_A) & _M32
        value = (value * const) & _M32
        return value ^ (value >> 16)

    def mix(x, y):
        r = (_MIX_L * x - _MIX_R * y) & _M32
        return r ^ (r >> 16)

    pool = [hashmix(entropy[i] if i < len(entropy) else 0) for i in range(4)]
    for src in range(4):
        for dst in range(4):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for src in range(4, len(entropy)):
        for dst in range(4):
            pool[dst] = mix(pool[dst], hashmix(entropy[src]))
    out, const = [], _INIT_B
    for i in range(n_words):
        v = pool[i % 4] ^ const
        const = (const * _MULT_B) & _M32
        v = (v * const) & _M32
        out.append(v ^ (v >> 16))
    return out


class LegacyGenerator:
    """Coder 1's draws: numpy 2.x Generator(PCG64(seed)).integers(0, totals) for int64 totals
    below 2**32, reproduced with Python integers."""

    def __init__(self, seed: int):
        w = seed_sequence_state(seed, 8)
        s = [w[2 * i] | (w[2 * i + 1] << 32) for i in range(4)]  # four uint64, little-endian pairs
        init_state, init_seq = (s[0] << 64) | s[1], (s[2] << 64) | s[3]
        self.inc = ((init_seq << 1) | 1) & _M128
        state = self.inc  # from state 0, one step: 0 * MULT + inc
        self.state = ((state + init_state) * _PCG_MULT + self.inc) & _M128  # add, one more step
        self._half: int | None = None  # the high half of a 64-bit output not yet used

    def next64(self) -> int:
        self.state = (self.state * _PCG_MULT + self.inc) & _M128
        s = self.state
        x = ((s >> 64) ^ s) & _M64
        rot = s >> 122
        return ((x >> rot) | (x << (64 - rot))) & _M64

    def next32(self) -> int:
        if self._half is not None:
            v, self._half = self._half, None
            return v
        v = self.next64()
        self._half = v >> 32
        return v & _M32

    def below(self, total: int) -> int:
        """A number in [0, total) for 2 <= total < 2**32 (Lemire's method, 32-bit)."""
        m = self.next32() * total
        if (m & _M32) < total:
            threshold = (_M32 - (total - 1)) % total
            while (m & _M32) < threshold:
                m = self.next32() * total
        return m >> 32

    def sample(self, counts) -> np.ndarray:
        """One token per row of integer counts (N,K), rows drawn in order."""
        c = np.asarray(counts.numpy() if hasattr(counts, "numpy") else counts, dtype=np.int64)
        u = np.array([self.below(int(t)) for t in c.sum(1)], dtype=np.int64)
        return inverse_cdf(c, u)
