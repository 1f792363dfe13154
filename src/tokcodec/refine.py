"""Token choice for the decoder's pixels (issue 14, rate-distortion optimised tokens).

The tokenizer's encoder picks, at each position, the codeword nearest its latent. That is what
the encoder was trained for, not what the decoder draws best from: with a small codebook the
nearest codeword is often not the one whose decoded pixels are closest to the image. The prior
and the bitstream do not care which codeword a position holds, so the encoder may choose.

`refine` starts from the nearest codewords and improves the decoded pixels' squared error by a
trust-region descent over tokens:

- one forward and backward pass of the pixel decoder gives the gradient g of the error with
  respect to the code vector at every position;
- the change of the error when position p moves from codeword t to codeword c is predicted as
  g_p . (E_c - E_t) + mu |E_c - E_t|^2: the first-order term plus a trust term (the error is far
  from linear over a jump between codewords). Each position takes its best predicted codeword;
- a step changes only positions whose predicted gain is the best within their 3x3 neighbourhood
  (changes at neighbouring positions interact through the decoder), and is kept only if the
  measured error falls. mu shrinks after a kept step and grows after a refused one (it starts
  where about REFINE_SHARE of the positions would change).

The decoder runs in bfloat16 (autocast) here: only the choice of tokens depends on it, and the
file is whatever tokens it chose. Decoding is unchanged. Every token kept, 12 Kodak images:
+1.07 dB at K=16, +0.66 at K=64, +0.39 at K=256, +0.30 at K=1024, for 1-3 % more bytes
(docs/rdo.md, scripts/token_share.py).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from . import correction

REFINE_STEPS = 6  # descent steps (one decoder forward and backward each): 4 give 85% of 12's gain, 6 give 92%
REFINE_SHARE = 0.05  # share of positions that would change at the first step's trust
MU_LADDER = 2.0 ** np.arange(-4, 14)


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16)


@functools.lru_cache(maxsize=16)
def _smoothing(n: int, cell: int) -> torch.Tensor:
    """(n, n) matrix that maps a row (or column) of n pixel values to what the tone and colour
    correction's grid of `cell`-token cells restores along it, unquantised: the mean of each
    cell (correction.cell_means), interpolated back to every pixel (correction.interpolation)."""
    f = 16 * cell
    g = -(-n // f)
    means = np.zeros((g, n))
    for i in range(g):
        means[i, i * f:min(n, (i + 1) * f)] = 1.0 / (min(n, (i + 1) * f) - i * f)
    return torch.from_numpy(correction.interpolation(n, g) @ means).float()


def _error(decoder: torch.nn.Module, codes: torch.Tensor, target: torch.Tensor, size: tuple[int, int],
           cell: int = 0) -> torch.Tensor:
    """Squared error of the decode of code vectors (1, D, h, w) against `target`, over the
    image's own `size` (width, height): the padding beyond it is not shown. `cell` > 0: the
    error a correction grid of that cell size (tokens) leaves, that is less the grid's
    unquantised cell means of the difference, interpolated (correction.fit and apply; the
    grid works per YCbCr channel, and a per-channel linear map commutes with the colour
    transform, so RGB gives the same)."""
    w, h = size
    with _autocast(target.device):
        y = decoder(codes)
    r = (target - y.float().clamp(0, 1))[0, :, :h, :w]
    if cell:
        r = r - _smoothing(h, cell).to(r.device) @ r @ _smoothing(w, cell).to(r.device).T
    return (r ** 2).sum()


@torch.no_grad()
def pixel_error(decoder: torch.nn.Module, codebook: torch.Tensor, tokens: np.ndarray, target: torch.Tensor,
                size: tuple[int, int], cell: int = 0) -> float:
    """The error `refine` lowers, of a token grid (h, w)."""
    E = codebook.float().to(target.device)
    t = torch.from_numpy(np.ascontiguousarray(tokens)).to(target.device)
    return float(_error(decoder, E[t].permute(2, 0, 1)[None], target, size, cell))


def refine(decoder: torch.nn.Module, codebook: torch.Tensor, tokens: np.ndarray, target: torch.Tensor,
           size: tuple[int, int], steps: int = REFINE_STEPS, editable: np.ndarray | None = None,
           cell: int = 0, bits: np.ndarray | None = None, lam: float = 0.0) -> np.ndarray:
    """Tokens (h, w) whose decode by `decoder` is closer to `target` (1, 3, 16h, 16w, values in
    [0, 1]) in squared error over the image's own `size` (width, height; padding is not shown),
    starting from `tokens`. Never worse than the start by the measure used here. `editable`
    (h, w) bool: the positions that may change (default all). `cell`: measure the error a
    correction grid of that cell size leaves (`_error`). `bits` (h * w, K) and `lam`: add lam x
    the bits of each position's codeword (a rate term; from the exact stage tables, `polish`)."""
    dev = target.device
    E = codebook.float().to(dev)  # (K, D), unit vectors
    t = torch.from_numpy(np.ascontiguousarray(tokens)).to(dev)
    free = None if editable is None else torch.from_numpy(np.ascontiguousarray(editable)).to(dev)
    B = None if bits is None or not lam else torch.as_tensor(bits, dtype=torch.float32, device=dev)

    def rate(t: torch.Tensor) -> float:
        return 0.0 if B is None else lam * float(B.gather(1, t.reshape(-1, 1)).sum())

    def loss_of(t: torch.Tensor) -> tuple[float, tuple[torch.Tensor, torch.Tensor]]:
        """The loss of a grid, and its graph for `grad_of`: the backward pass runs only for a
        grid that is kept and stepped from (a rejected step's, or the last step's, would be
        wasted: 2-3 of a refinement's 7 backward passes on Kodak)."""
        e = E[t].permute(2, 0, 1)[None].clone().requires_grad_(True)
        err = _error(decoder, e, target, size, cell)
        return float(err.detach()) + rate(t), (err, e)

    def grad_of(graph: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        err, e = graph
        (g,) = torch.autograd.grad(err, e)
        return g[0].permute(1, 2, 0).reshape(-1, E.shape[1])  # (h w, D)

    with torch.enable_grad():
        loss, graph = loss_of(t)
        mu = None
        for _ in range(steps):
            if graph is not None:  # the kept grid's gradient, once it is stepped from
                g, graph = grad_of(graph), None
            flat = t.reshape(-1)
            lin = g @ E.T - (g * E[flat]).sum(1, keepdim=True)  # (N, K) first-order change
            if B is not None:
                lin += lam * (B - B.gather(1, flat[:, None]))
            dist = torch.cdist(E[flat], E).square()  # squared distance to every codeword

            def predicted(mu: float) -> torch.Tensor:  # 0 exactly for the current codeword
                return (lin + mu * dist).scatter_(1, flat[:, None], 0.0)
            if mu is None:
                for mu in MU_LADDER:  # share of the positions that may change
                    improves = predicted(mu).min(1)[0].reshape(t.shape) < 0
                    if (improves.float().mean() if free is None
                            else (improves & free).float().sum() / free.sum().clamp_min(1)) <= REFINE_SHARE:
                        break
                mu = float(mu)
            gain, best = predicted(mu).min(1)
            gain, best = gain.reshape(t.shape), best.reshape(t.shape)
            local = -F.max_pool2d(-gain[None, None], 3, stride=1, padding=1)[0, 0]
            pick = (gain < 0) & (gain <= local) & (best != t)
            if free is not None:
                pick &= free
            if not pick.any():
                mu *= 0.5
                continue
            t2 = torch.where(pick, best, t)
            loss2, graph2 = loss_of(t2)
            if loss2 < loss:
                t, loss, graph, mu = t2, loss2, graph2, mu * 0.7
            else:
                mu *= 2.0
            del graph2
    return t.cpu().numpy().astype(np.int64)
