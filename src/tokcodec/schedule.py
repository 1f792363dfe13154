"""Which token positions belong to which coding stage. Integer arithmetic only.

Schedule 1 ("recursive 2x2 phase groups"), for a token grid of h x w (both even):
  * base stride S: the smallest power of two >= 2 with ceil(h/S) * ceil(w/S) <= BASE_MAX.
  * stage 0: positions (i, j) with i % S == 0 and j % S == 0 (coded with no spatial context).
  * then for s = S, S/2, ..., 2 with t = s/2, three stages refine the stride-s lattice to t:
        (i % s, j % s) == (t, t), then (t, 0), then (0, t).
The last three stages are UIGC's stages 1, 2, 3 (odd/odd, odd/even, even/odd); all earlier
stages together are UIGC's stage 0 (even/even), split so that no large group is coded
without spatial context. Within a stage, positions are in raster order.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

SCHEDULE_ID = 1
BASE_MAX = 64


def base_stride(h: int, w: int) -> int:
    s = 2
    while -(-h // s) * -(-w // s) > BASE_MAX:
        s *= 2
    return s


@lru_cache(maxsize=64)
def stage_ids(h: int, w: int, base: int | None = None) -> np.ndarray:
    """(h, w) int array: the stage of each position. Cached; do not modify the result.
    `base` overrides the base stride (training uses it to see every pyramid level)."""
    if h % 2 or w % 2 or h <= 0 or w <= 0:
        raise ValueError(f"token grid {h}x{w} must have even, positive sides")
    S = base or base_stride(h, w)
    ids = np.full((h, w), -1, dtype=np.int64)
    ids[::S, ::S] = 0
    stage, s = 1, S
    while s >= 2:
        t = s // 2
        for di, dj in ((t, t), (t, 0), (0, t)):
            ids[di::s, dj::s] = stage
            stage += 1
        s = t
    assert (ids >= 0).all()
    ids.setflags(write=False)
    return ids


def n_stages(h: int, w: int) -> int:
    return int(stage_ids(h, w).max()) + 1


def stage_positions(h: int, w: int) -> list[np.ndarray]:
    """Flat raster indices of each stage's positions, in stage order."""
    flat = stage_ids(h, w).ravel()
    return [np.flatnonzero(flat == s) for s in range(n_stages(h, w))]


def uigc_stage(h: int, w: int) -> np.ndarray:
    """(h, w) array of UIGC stage numbers 0..3 (0 = even/even)."""
    i = np.arange(h)[:, None] % 2
    j = np.arange(w)[None, :] % 2
    return np.where((i == 0) & (j == 0), 0, np.where((i == 1) & (j == 1), 1, np.where(i == 1, 2, 3)))
