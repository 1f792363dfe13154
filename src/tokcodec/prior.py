"""The multi-stage transformer prior (MST).

A bidirectional transformer over the token grid. Input: token ids with [MASK] (id K) at every
position not yet known; output: for every position, a distribution over the K codewords.
One forward pass predicts a whole coding stage (schedule.py) from the stages before it.
One trunk serves every codebook size: each K has its own token embedding and output head.

Attention runs inside fixed windows of WxW tokens (Swin-style: every other layer shifts the
windows by W/2), with a learned relative-position bias per head; this is the only position
information, so the model works for any grid size, and time and memory grow linearly with
the number of tokens.

Two evaluations of the same weights:
  * `Prior` (float, torch autograd): for training.
  * `ExactPrior` (integers): for coding. Weights are integers with per-channel dyadic scales,
    activations are fixed-point integers, matrix products are float64 products of integers
    (exact while sums stay below 2**53, so any BLAS, thread count or device gives the same
    result), and LayerNorm, softmax and the output distribution use integer arithmetic and a
    lookup table. The encoder and the decoder therefore build identical count tables on any
    machine (Balle et al. 2019, "Integer networks for data compression").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from decimal import Decimal, getcontext
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .memory import reuse_large_blocks


@dataclass
class PriorConfig:
    dim: int = 128
    depth: int = 6
    heads: int = 4
    mlp: int = 256
    window: int = 8
    codebooks: tuple[int, ...] = (1024, 256, 64, 16)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PriorConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# ---------------------------------------------------------------------------------------------
# Window partitioning, shared by both evaluations (works on any dtype).

def padded_side(n: int, shift: int, win: int) -> int:
    """The side of whole windows holding a grid side of n positions placed at `shift`."""
    return -(-(n + shift) // win) * win


def pad_grid(x: torch.Tensor, win: int, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,H,W,C) -> the grid placed at (shift, shift) in zeros of whole windows (B,Hp,Wp,C),
    contiguous, and its validity (Hp,Wp)."""
    B, H, W, C = x.shape
    Hp, Wp = padded_side(H, shift, win), padded_side(W, shift, win)
    if (Hp, Wp) == (H, W):  # shift 0 on a grid of whole windows: no padding to write
        xp = x.contiguous()
        valid = torch.ones(Hp, Wp, dtype=torch.bool, device=x.device)
    else:  # zeros around the grid only (filling the whole padded grid first cost as much as the copy)
        xp = x.new_empty(B, Hp, Wp, C)
        xp[:, :shift].zero_()
        xp[:, shift + H:].zero_()
        xp[:, shift:shift + H, :shift].zero_()
        xp[:, shift:shift + H, shift + W:].zero_()
        xp[:, shift:shift + H, shift:shift + W] = x
        valid = torch.zeros(Hp, Wp, dtype=torch.bool, device=x.device)
        valid[shift:shift + H, shift:shift + W] = True
    return xp, valid


def window_validity(valid: torch.Tensor, win: int) -> torch.Tensor:
    """Validity (Hp,Wp) -> per window (nW, win*win), windows and positions row-major."""
    Hp, Wp = valid.shape
    return valid.view(Hp // win, win, Wp // win, win).permute(0, 2, 1, 3).reshape(-1, win * win)


class Band(NamedTuple):
    """Whole rows of windows of a grid placed at (shift, shift) in whole windows: window rows
    r0 .. r0 + nr, padded rows py0 .. py1, the grid's rows y0 .. y1 in them, starting at band
    row a."""
    r0: int
    nr: int
    py0: int
    py1: int
    y0: int
    y1: int
    a: int


def window_bands(h: int, shift: int, win: int, per: int):
    """The bands of `per` rows of windows (the last may hold fewer) covering a grid of h rows
    placed at `shift`, in order."""
    nh = padded_side(h, shift, win) // win
    for r0 in range(0, nh, per):
        nr = min(per, nh - r0)
        py0, py1 = r0 * win, (r0 + nr) * win
        y0, y1 = max(0, py0 - shift), min(h, py1 - shift)
        yield Band(r0, nr, py0, py1, y0, y1, y0 + shift - py0)


def in_band(t: torch.Tensor, band: Band, shift: int, wp: int) -> torch.Tensor:
    """A band's grid rows t (y1 - y0, w, ...) placed at (a, shift) in zeros of its padded rows:
    (py1 - py0, wp, ...)."""
    out = t.new_zeros(band.py1 - band.py0, wp, *t.shape[2:])
    out[band.a:band.a + t.shape[0], shift:shift + t.shape[1]] = t
    return out


def band_validity(w: int, shift: int, win: int, band: Band, device=None) -> torch.Tensor:
    """Key validity (windows, win*win) of a band's windows: inside the grid or padding."""
    inside = torch.ones(band.y1 - band.y0, w, dtype=torch.bool, device=device)
    return window_validity(in_band(inside, band, shift, padded_side(w, shift, win)), win)


def partition(x: torch.Tensor, win: int, shift: int):
    """(B,H,W,C) -> windows (B*nW, win*win, C), key validity (nW, win*win), layout."""
    B, H, W, C = x.shape
    xp, valid = pad_grid(x, win, shift)
    Hp, Wp = valid.shape
    nh, nw = Hp // win, Wp // win
    xw = xp.view(B, nh, win, nw, win, C).permute(0, 1, 3, 2, 4, 5).reshape(B * nh * nw, win * win, C)
    return xw, window_validity(valid, win), (B, H, W, Hp, Wp, shift)


def unpartition(xw: torch.Tensor, win: int, layout) -> torch.Tensor:
    B, H, W, Hp, Wp, shift = layout
    nh, nw = Hp // win, Wp // win
    C = xw.shape[-1]
    x = xw.view(B, nh, nw, win, win, C).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)
    return x[:, shift:shift + H, shift:shift + W]


@lru_cache(maxsize=8)
def rel_index(win: int) -> torch.Tensor:
    """(win*win, win*win) indices into a (2*win-1)^2 relative-position table."""
    ys, xs = torch.meshgrid(torch.arange(win), torch.arange(win), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dy = ys[:, None] - ys[None, :] + win - 1
    dx = xs[:, None] - xs[None, :] + win - 1
    return dy * (2 * win - 1) + dx


# ---------------------------------------------------------------------------------------------
# Float model (training).

class Block(nn.Module):
    def __init__(self, cfg: PriorConfig, shift: int):
        super().__init__()
        self.cfg, self.shift = cfg, shift
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.rel = nn.Parameter(torch.zeros(cfg.heads, (2 * cfg.window - 1) ** 2))
        self.ln2 = nn.LayerNorm(cfg.dim)
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp)
        self.fc2 = nn.Linear(cfg.mlp, cfg.dim)

    def attention(self, x: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
        """Window attention of normalised features x (B,H,W,C), projected; with a boolean
        (B,H,W) `where`, the rows (N,C) there only (the projection runs on those alone)."""
        cfg = self.cfg
        hd = cfg.dim // cfg.heads
        qkv = self.qkv(x)
        xw, valid, layout = partition(qkv, cfg.window, self.shift)
        n, L, _ = xw.shape
        q, k, v = xw.view(n, L, 3, cfg.heads, hd).permute(2, 0, 3, 1, 4)
        bias = self.rel[:, rel_index(cfg.window).to(x.device)]  # (heads, L, L)
        nwin = valid.shape[0]
        if bool(valid.all()):  # no padding keys: one bias for every window (broadcast)
            bias = bias.unsqueeze(0)
        else:
            keymask = torch.where(valid, 0.0, float("-inf")).to(x.dtype)  # (nW, L)
            bias = bias.unsqueeze(0) + keymask.view(nwin, 1, 1, L)  # (nW, heads, L, L)
            bias = bias.repeat(n // nwin, 1, 1, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        out = unpartition(out.transpose(1, 2).reshape(n, L, cfg.dim), cfg.window, layout)
        return self.proj(out if where is None else out[where])

    def forward(self, x: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
        """Features (B,H,W,C) -> (B,H,W,C), or the rows (N,C) at the boolean (B,H,W) `where`
        (attention reads every position; the rest acts on each position by itself)."""
        x = (x + self.attention(self.ln1(x))) if where is None else x[where] + self.attention(self.ln1(x), where)
        return self.mlp(x)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        """The block's second half: x plus its MLP (acts on each position by itself)."""
        return x + self.fc2(F.relu(self.fc1(self.ln2(x))))

    def _bands(self, x: torch.Tensor, where: torch.Tensor | None) -> torch.Tensor:
        """`forward` for one image (x: features (H,W,C)) band by band, in bounded memory: each
        band of whole rows of this block's windows goes through attention, projection and MLP
        before the next (every step acts on rows or on windows by themselves, and chunks of
        rows or windows give the whole grid's values: tested). With `where` (H,W): the rows
        (N,C) there, in raster order, their attention gathered band by band and projection and
        MLP run on all N at once, as `forward` does."""
        cfg = self.cfg
        C, heads, win = cfg.dim, cfg.heads, cfg.window
        hd, L = C // heads, win * win
        h, w, _ = x.shape
        shift = self.shift
        wp = padded_side(w, shift, win)
        nw = wp // win
        rel = self.rel[:, rel_index(win).to(x.device)]  # (heads, L, L)
        # as `attention`: on a padded grid every window gets its own mask
        padded = (padded_side(h, shift, win), wp) != (h, w)
        out = []
        for b in window_bands(h, shift, win, max(1, BAND_TOKENS // (win * wp))):
            band = in_band(self.qkv(self.ln1(x[b.y0:b.y1])), b, shift, wp)
            n = b.nr * nw
            xw = band.view(b.nr, win, nw, win, 3 * C).permute(0, 2, 1, 3, 4).reshape(n, L, 3 * C)
            q, k, v = xw.view(n, L, 3, heads, hd).permute(2, 0, 3, 1, 4)
            if padded:
                vw = band_validity(w, shift, win, b, x.device)
                bias = rel.unsqueeze(0) + torch.where(vw, 0.0, float("-inf")).to(x.dtype).view(n, 1, 1, L)
            else:
                bias = rel.unsqueeze(0)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
            o = o.transpose(1, 2).reshape(b.nr, nw, win, win, C).permute(0, 2, 1, 3, 4).reshape(b.py1 - b.py0, wp, C)
            o = o[b.a:b.a + b.y1 - b.y0, shift:shift + w]
            if where is not None:  # the rows asked: projection and MLP on all of them at once below
                out.append(o[where[b.y0:b.y1]])
                continue
            out.append(self.mlp(x[b.y0:b.y1] + self.proj(o)))
        if where is None:
            return torch.cat(out).view(h, w, C)
        return self.mlp(x[where] + self.proj(torch.cat(out)))


class Prior(nn.Module):
    def __init__(self, cfg: PriorConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or PriorConfig()
        self.emb = nn.ModuleDict({str(k): nn.Embedding(k + 1, cfg.dim) for k in cfg.codebooks})
        for e in self.emb.values():
            nn.init.normal_(e.weight, std=0.5)
        self.blocks = nn.ModuleList(
            [Block(cfg, (i % 2) * (cfg.window // 2)) for i in range(cfg.depth)])
        self.ln_out = nn.LayerNorm(cfg.dim)
        self.head = nn.ModuleDict({str(k): nn.Linear(cfg.dim, k) for k in cfg.codebooks})

    def forward(self, tokens: torch.Tensor, k: int, where: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B,H,W) with K = [MASK] -> logits (B,H,W,K), or (N,K) at the N positions
        where the boolean (B,H,W) `where` is set (saves the output head elsewhere)."""
        one = not torch.is_grad_enabled() and tokens.shape[0] == 1  # inference on one image: by bands
        # batches of photo-size grids without gradients keep their freed blocks for reuse
        large = not one and not torch.is_grad_enabled() and tokens.numel() >= LARGE_GRID_TOKENS
        with reuse_large_blocks(large and tokens.device.type == "cpu"):
            x = self.emb[str(k)](tokens[0] if one else tokens)
            w = where[0] if one and where is not None else where
            for i, blk in enumerate(self.blocks):  # the last block on the rows asked only
                asked = w if i == len(self.blocks) - 1 else None
                x = blk._bands(x, asked) if one else blk(x, asked)
            if w is not None and not len(self.blocks):
                x = x[w]
            x = self.head[str(k)](self.ln_out(x))
            return x.unsqueeze(0) if one and w is None else x


# ---------------------------------------------------------------------------------------------
# Exact integer evaluation (coding).

ACT_BITS = 8            # activations are integers in units of 2**-8
WEIGHT_MAX = 511        # weights are 10-bit signed integers per output channel
SCALE_SHIFT = 30        # per-channel scale = multiplier / 2**30
GAMMA_BITS = 12         # LayerNorm gain in units of 2**-12
EXP_BITS = 16           # exp table values in units of 2**-16
EXP_RANGE = 16          # exp(-x) is taken as 0 beyond x = 16
COUNT_BITS = 20         # count tables sum to at most 2**20


@lru_cache(maxsize=1)
def exp_table() -> torch.Tensor:
    """EXP[i] = round(2**16 * exp(-i / 2**8)), i = 0 .. 16 * 2**8, computed in decimal
    arithmetic (correctly rounded, identical on every machine)."""
    getcontext().prec = 40
    one = Decimal(1 << EXP_BITS)
    vals = [int((one * (Decimal(-i) / Decimal(1 << ACT_BITS)).exp()).to_integral_value())
            for i in range(EXP_RANGE * (1 << ACT_BITS) + 1)]
    return torch.tensor(vals, dtype=torch.int64)


CHUNK = 2048            # tokens per block of work in the exact evaluation (speed only)
# grids from this many tokens up (about 4 MP) run a pass with freed blocks kept for reuse
# (memory.py): their whole-grid tensors are over glibc's 32 MB mmap threshold
LARGE_GRID_TOKENS = 16384
BAND_TOKENS = 4096  # positions per band of the float model's inference (`Block._bands`)


def _rowwise_into(fn, x: torch.Tensor) -> torch.Tensor:
    """Apply a per-token function to x (..., C) in chunks of CHUNK tokens: fn(rows, out) writes
    its (rows, C) result into `out` (no copy of each chunk's result; out None: return it)."""
    flat = x.reshape(-1, x.shape[-1])
    if flat.shape[0] <= CHUNK:
        return fn(flat, None).reshape(x.shape)
    out = torch.empty_like(flat)
    for a in range(0, flat.shape[0], CHUNK):
        fn(flat[a:a + CHUNK], out[a:a + CHUNK])
    return out.reshape(x.shape)


def _lookup(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """table[idx], rows of a table of any rank, for integer-valued indices of any float or
    integer dtype: an index_select with int32 indices (half the time of advanced indexing with
    int64 ones)."""
    return table.index_select(0, idx.reshape(-1).to(torch.int32)).view(*idx.shape, *table.shape[1:])


def _rowwise_add_(x: torch.Tensor, fn, src: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., C), contiguous, += fn(rows of src) (default src: x itself), chunk by chunk in
    place: each chunk's result is added where it belongs (fn acts on each row by itself, so
    adding chunk by chunk gives what adding the whole result would)."""
    flat = x.view(-1, x.shape[-1])
    rows = flat if src is None else src.reshape(-1, src.shape[-1])
    for a in range(0, flat.shape[0], CHUNK):
        flat[a:a + CHUNK] += fn(rows[a:a + CHUNK])
    return x


# The integer arithmetic below runs on int64 tensors or on float64 tensors that hold integers.
# In float64 every step is exact while its operands and result stay below 2**52 in magnitude:
# sums, differences and products are then exact, a multiplication by 2**-b is exact, and for
# integers |a| < 2**52, b > 0, floor(fl(a / b)) = floor(a / b) (a quotient that is not an
# integer lies at least 1/b from the next integer, more than half an ulp of a / b).
# `ExactPrior.float_bounds` proves those limits for a weights file over every input grid.

def _rshift_round_(v: torch.Tensor, bits: int) -> torch.Tensor:
    """v / 2**bits rounded half up, in place on v (a fresh tensor); returns v."""
    v += 1 << (bits - 1)
    if v.is_floating_point():
        return v.mul_(2.0 ** -bits).floor_()
    v >>= bits
    return v


def _floor_div(num: torch.Tensor, den) -> torch.Tensor:
    if num.is_floating_point():
        return torch.floor(num / den)
    return torch.div(num, den, rounding_mode="floor")


def _floor_div_(num: torch.Tensor, den) -> torch.Tensor:
    """_floor_div, in place on num (a fresh tensor); returns it."""
    if num.is_floating_point():
        return num.div_(den).floor_()
    return num.div_(den, rounding_mode="floor")


def _imatmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Product of integer tensors through float64 (exact: every partial sum < 2**53);
    the result has a's dtype."""
    if a.is_floating_point():
        return torch.matmul(a, b)
    return torch.matmul(a.to(torch.float64), b.to(torch.float64)).to(torch.int64)


def _isqrt(v: torch.Tensor) -> torch.Tensor:
    s = torch.sqrt(v.to(torch.float64)).floor_().to(v.dtype)
    s = torch.where(s * s > v, s - 1, s)
    return torch.where((s + 1) * (s + 1) <= v, s + 1, s)


def quantize_linear(w: torch.Tensor, b: torch.Tensor | None, in_scale: float = 1.0) -> dict:
    """Float Linear (out,in) -> integer weights, per-output multipliers and integer bias.
    `in_scale` folds a constant factor into the weights (used for 1/sqrt(head_dim))."""
    w = w.double() * in_scale
    amax = w.abs().amax(1).clamp_min(1e-12)
    scale = amax / WEIGHT_MAX
    wq = torch.round(w / scale[:, None]).to(torch.int16)
    mult = torch.round(scale * (1 << SCALE_SHIFT)).to(torch.int64)
    bias = torch.zeros(w.shape[0], dtype=torch.float64) if b is None else b.double() * in_scale
    bq = torch.round(bias * (1 << ACT_BITS)).to(torch.int32)
    return {"w": wq.t().contiguous(), "m": mult.to(torch.int32), "b": bq}


def quantize(prior: Prior) -> dict[str, torch.Tensor]:
    """Float prior -> the integer tensors that ExactPrior runs (what ships in weights/)."""
    cfg = prior.cfg
    hd = cfg.dim // cfg.heads
    out: dict[str, torch.Tensor] = {}

    def lin(name, mod, in_scale=1.0):
        for k, v in quantize_linear(mod.weight.detach(), mod.bias.detach(), in_scale).items():
            out[f"{name}.{k}"] = v

    def ln(name, mod):
        out[f"{name}.g"] = torch.round(mod.weight.detach().double() * (1 << GAMMA_BITS)).to(torch.int32)
        out[f"{name}.b"] = torch.round(mod.bias.detach().double() * (1 << ACT_BITS)).to(torch.int32)

    for k in cfg.codebooks:
        out[f"emb.{k}"] = torch.round(prior.emb[str(k)].weight.detach().double() * (1 << ACT_BITS)).to(torch.int32)
        lin(f"head.{k}", prior.head[str(k)])
    for i, blk in enumerate(prior.blocks):
        ln(f"b{i}.ln1", blk.ln1)
        qscale = torch.ones(3 * cfg.dim, 1, dtype=torch.float64)
        qscale[:cfg.dim] = hd ** -0.5
        w = blk.qkv.weight.detach().double() * qscale
        b = blk.qkv.bias.detach().double() * qscale[:, 0]
        for kk, v in quantize_linear(w, b).items():
            out[f"b{i}.qkv.{kk}"] = v
        out[f"b{i}.rel"] = torch.round(blk.rel.detach().double() * (1 << ACT_BITS)).to(torch.int32)
        lin(f"b{i}.proj", blk.proj)
        ln(f"b{i}.ln2", blk.ln2)
        lin(f"b{i}.fc1", blk.fc1)
        lin(f"b{i}.fc2", blk.fc2)
    ln("ln_out", prior.ln_out)
    return out


class ExactPrior:
    """Integer evaluation of a quantised prior; bit-identical output on any machine.

    The integers are held in float64 tensors when `float_bounds` proves every step exact for
    these weights over every input grid (true of the shipped weights), else in int64: the same
    values either way, and float64 needs no conversion around the matrix products and divides
    quickly (docs/performance.md, session 14)."""

    FLOAT_LIMIT = 2.0 ** 51  # bounds are computed in float64: one bit of margin below 2**52

    def __init__(self, cfg: PriorConfig, tensors: dict[str, torch.Tensor], device="cpu", dtype=None):
        self.cfg = cfg
        self.device = torch.device(device)
        self.t = {k: v.to(self.device, torch.int64) for k, v in tensors.items()}
        if dtype is None:
            dtype = torch.float64 if max(self.float_bounds().values()) < self.FLOAT_LIMIT else torch.int64
        self.dtype = dtype
        # the tensors in the working dtype (exact: all are integers far below 2**52); weight
        # matrices always as float64, the operand type of the matrix products
        self.p = {k: v.to(dtype) for k, v in self.t.items()}
        self.w64 = {k: v.to(torch.float64) for k, v in self.t.items() if k.endswith(".w")}
        self.exp = exp_table().to(self.device)
        self.exp64 = self.exp.to(torch.float64)  # the same table as float64 (exact: < 2**17)
        self.rel_idx = rel_index(cfg.window).to(self.device)
        # each layer's relative-position bias, gathered once: (heads, L, L)
        self.rel = [self.p[f"b{i}.rel"][:, self.rel_idx] for i in range(cfg.depth)]
        self._twin: Prior | None = None  # float_twin(), built on first use
        self._lin: dict = {}  # _linear_params
        self._qkv0: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # first_qkv

    def float_bounds(self) -> dict[str, float]:
        """Upper bounds, over every input grid, on the magnitudes that a float64 evaluation
        must keep below 2**52 besides the matrix products' sums (below 2**53 either way;
        spec/FORMAT.md section 5.3): interval arithmetic per channel, as in the spec, with
        the sum of squares of a layernorm bounded by sum(X_c**2) + C (the spread around the
        floored mean is at most the sum of squares plus C)."""
        cfg, t = self.cfg, {k: v.double() for k, v in self.t.items()}
        C, L = cfg.dim, cfg.window ** 2
        worst: dict[str, float] = {}

        def note(name, v):
            worst[name] = max(worst.get(name, 0.0), float(v))

        def ln(X, name):
            note("layernorm_sum", X.sum())
            note("layernorm_sum_of_squares", (X * X).sum() + C)
            note("layernorm_scaled_difference", 2 * X.max() * (1 << ACT_BITS))
            y = (1 << ACT_BITS) * (3 * C) ** 0.5 + (1 << ACT_BITS)
            note("layernorm_product", y * t[f"{name}.g"].abs().max())
            return torch.floor(y * t[f"{name}.g"].abs() / (1 << GAMMA_BITS)) + t[f"{name}.b"].abs() + 1

        def lin(X, name):
            acc = X @ t[f"{name}.w"].abs()
            scaled = acc * t[f"{name}.m"].abs()
            # _linear adds the bias before the shift, as b * 2**30
            note("scaled_product", (scaled + t[f"{name}.b"].abs() * (1 << SCALE_SHIFT)).max()
                 + (1 << (SCALE_SHIFT - 1)))
            return torch.floor(scaled / (1 << SCALE_SHIFT)) + t[f"{name}.b"].abs() + 1

        for k in cfg.codebooks:
            X = t[f"emb.{k}"].abs().amax(0)
            for i in range(cfg.depth):
                v = lin(ln(X, f"b{i}.ln1"), f"b{i}.qkv")[2 * C:]
                note("attention_division", L * (1 << EXP_BITS) * (2 * v.max() + 1))
                X = X + lin(v + 1, f"b{i}.proj")
                X = X + lin(lin(ln(X, f"b{i}.ln2"), f"b{i}.fc1"), f"b{i}.fc2")
            lin(ln(X, "ln_out"), f"head.{k}")
        return worst

    def _linear(self, x: torch.Tensor, name: str, cols: slice | None = None) -> torch.Tensor:
        """linear(x, name) (spec 5.1), or its output channels `cols` only. The bias is added
        before the shift, as b * 2**30 (floor(y) + b = floor(y + b) for an integer b): one
        fused step, acc * m + (2**29 + b * 2**30), then the shift."""
        w, m, b = self._linear_params(name, cols)
        acc = torch.addcmul(b, _imatmul(x, w), m)
        if acc.is_floating_point():
            return acc.mul_(2.0 ** -SCALE_SHIFT).floor_()
        acc >>= SCALE_SHIFT
        return acc

    def _linear_params(self, name: str, cols: slice | None):
        """(weights as float64, multipliers, 2**29 + b * 2**30) of a linear, in the working
        dtype, for the output channels `cols` (contiguous copies, made once)."""
        key = (name, None if cols is None else (cols.start, cols.stop))
        if key not in self._lin:
            c = cols or slice(None)
            self._lin[key] = (self.w64[f"{name}.w"][:, c].contiguous(), self.p[f"{name}.m"][c].contiguous(),
                              (self.p[f"{name}.b"][c] * (1 << SCALE_SHIFT) + (1 << (SCALE_SHIFT - 1))).contiguous())
        return self._lin[key]

    def _layernorm(self, x: torch.Tensor, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """LayerNorm of rows x (N, C) (spec 5.3); into `out` where given."""
        c = x.shape[-1]
        d = x - _floor_div(x.sum(-1, keepdim=True), c)
        var = _floor_div((d * d).sum(-1, keepdim=True), c)
        std = _isqrt(var + 1).clamp_min(1)  # eps = 2**-16 in real units
        n = _floor_div_(d.mul_(1 << ACT_BITS), std)  # in place on d (fresh, no longer needed)
        n *= self.p[f"{name}.g"]
        n = _rshift_round_(n, GAMMA_BITS)
        return n.add_(self.p[f"{name}.b"]) if out is None else torch.add(n, self.p[f"{name}.b"], out=out)

    def _softmax_weights(self, s: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Integer logits (units 2**-8) -> unnormalised integer weights via the exp table, as
        float64 (exact integers below 2**17). Keys where `valid` is False get weight 0: EXP's
        last entry, 2**16 exp(-16), rounds to 0."""
        if valid is not None:  # in place on s (a fresh tensor, as the callers make it)
            s.masked_fill_(~valid, -(1 << 40))
        m = s.amax(-1, keepdim=True)
        idx = s.neg_().add_(m).clamp_max_(self.exp.numel() - 1)  # m - s, in place (exact integers)
        return _lookup(self.exp64, idx)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                valid: torch.Tensor) -> torch.Tensor:
        """Attention inside windows (spec 5.2): queries q (n, heads, M, hd), keys and values k, v
        (n, heads, L, hd) with key validity (n, L), relative-position bias broadcast to
        (n, heads, M, L) -> the outputs o (n, heads, M, hd), contiguous."""
        n, L = q.shape[0], k.shape[2]
        s = _rshift_round_(_imatmul(q, k.transpose(-1, -2)), ACT_BITS)  # (n, heads, M, L)
        s += bias
        # windows without padding keys (every window of an unshifted layer on a grid whose
        # sides are multiples of the window) need no key mask: skipping it is exact
        e = self._softmax_weights(s, None if bool(valid.all()) else valid.view(n, 1, 1, L))
        # e is float64; its sums and products with v are exact (< 2**53)
        num = torch.matmul(e, v.to(torch.float64)).to(v.dtype)
        den = e.sum(-1, keepdim=True).to(num.dtype)
        # num / den rounded half up: floor((2 num + den) / (2 den)), in place on the fresh num
        return _floor_div_(num.mul_(2).add_(den), den.mul_(2))

    def first_qkv(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Block 0's qkv as a table over the ids: linear(layernorm(emb.K[id], b0.ln1), b0.qkv) at
        row id + 1, and at row 0 a padding position's (the linear of zero features); whole and
        split into its q and k, v channels. Block 0's input depends on the id alone and both
        steps act on each position by itself, so looking the rows up gives the same integers."""
        if k not in self._qkv0:
            e = self.p[f"emb.{k}"]
            feats = torch.cat([e.new_zeros(1, e.shape[1]), self._layernorm(e, "b0.ln1")])
            full = self._linear(feats, "b0.qkv")
            c = self.cfg.dim
            self._qkv0[k] = (full, full[:, :c].contiguous(), full[:, c:].contiguous())
        return self._qkv0[k]

    def _band_windows(self, x: torch.Tensor, ids: torch.Tensor, k: int, i: int, b: Band,
                      which: int) -> torch.Tensor:
        """Block i's qkv (which = 0; 1: q, 2: k and v) at band b of its padded grid (whole rows
        of windows), in grid order (rows * Wp, channels): linear(layernorm(x)) inside the
        grid, and at padding positions the linear of zero features (spec 5.2's zero grid; a
        padding key's weight is 0 and a padding query's output is dropped). Block 0 looks its
        qkv up by id (`first_qkv`, row 0: padding)."""
        cfg = self.cfg
        win, C = cfg.window, cfg.dim
        shift = (i % 2) * (win // 2)
        w = ids.shape[1]
        wp = padded_side(w, shift, win)
        y0, y1 = b.y0, b.y1
        inner = shift == 0 and wp == w and y1 - y0 == b.py1 - b.py0  # no padding in the band
        if i == 0:
            table, band = self.first_qkv(k)[which], ids[y0:y1] + 1
            return _lookup(table, band if inner else in_band(band, b, shift, wp)).view(-1, table.shape[1])
        normed = self._layernorm(x[y0:y1].reshape(-1, C), f"b{i}.ln1")
        if not inner:
            normed = in_band(normed.view(y1 - y0, w, C), b, shift, wp).view(-1, C)
        cols = (None, slice(0, C), slice(C, 3 * C))[which]
        return self._linear(normed, f"b{i}.qkv", cols)

    def _block_(self, x: torch.Tensor, ids: torch.Tensor, k: int, i: int) -> None:
        """Block i on the residual stream x (H, W, C), in place, by bands of whole rows of its
        windows (about CHUNK positions): a band's attention reads only its own windows and
        everything after it acts on each position by itself, so each band goes through
        layernorm, qkv, attention, projection and MLP before the next (the same integers as
        the whole grid step by step; only x is whole-grid sized)."""
        cfg = self.cfg
        C, heads, win = cfg.dim, cfg.heads, cfg.window
        hd, L = C // heads, win * win
        shift = (i % 2) * (win // 2)
        h, w, _ = x.shape
        wp = padded_side(w, shift, win)
        nw = wp // win
        for b in window_bands(h, shift, win, max(1, CHUNK // (win * wp))):
            t = self._band_windows(x, ids, k, i, b, 0).view(b.nr, win, nw, win, 3, heads, hd)
            t = t.permute(4, 0, 2, 5, 1, 3, 6).reshape(3, b.nr * nw, heads, L, hd)  # (3, windows, heads, L, hd)
            o = self._attend(t[0], t[1], t[2], self.rel[i], band_validity(w, shift, win, b, self.device))
            del t
            o = o.view(b.nr, nw, heads, win, win, hd).permute(0, 3, 1, 4, 2, 5).reshape(b.nr * win, wp, C)
            xb = x[b.y0:b.y1].view(-1, C)
            xb += self._linear(o[b.a:b.a + b.y1 - b.y0, shift:shift + w].reshape(-1, C), f"b{i}.proj")
            xb += self._mlp(xb, i)

    def _last_block(self, x: torch.Tensor, ids: torch.Tensor, k: int, i: int, rows: torch.Tensor) -> torch.Tensor:
        """Block i's output (N, C) at the flat positions `rows` only (unsorted, repeats allowed):
        queries at those rows alone (a query's scores, weights and output depend on its own q
        and its window's keys and values), grouped by window (at most M slots a window), the
        keys and values of those windows only, band by band; then projection and MLP on the
        rows."""
        cfg = self.cfg
        C, heads, win = cfg.dim, cfg.heads, cfg.window
        hd, L = C // heads, win * win
        shift = (i % 2) * (win // 2)
        h, w, _ = x.shape
        if not len(rows):
            return x.new_empty(0, C)
        wp = padded_side(w, shift, win)
        nh, nw = padded_side(h, shift, win) // win, wp // win
        # the asked rows grouped by window: slot (window, rank) of each, M slots per window
        ry, rx = rows // w + shift, rows % w + shift
        window_of = (ry // win) * nw + rx // win
        order = torch.argsort(window_of, stable=True)
        used, counts = torch.unique_consecutive(window_of[order], return_counts=True)
        m = int(counts.max())
        group = torch.repeat_interleave(torch.arange(len(used), device=rows.device), counts)
        cell = group * m + torch.arange(len(order), device=rows.device) - (torch.cumsum(counts, 0) - counts)[group]
        asked = rows[order]
        if i == 0:
            qr = _lookup(self.first_qkv(k)[1], ids.reshape(-1)[asked] + 1)
        else:
            qr = self._linear(self._layernorm(x.view(-1, C)[asked], f"b{i}.ln1"), f"b{i}.qkv", slice(0, C))
        q = torch.zeros(len(used) * m, C, dtype=self.dtype, device=self.device)
        q[cell] = qr
        del qr
        slot = torch.zeros(len(used) * m, dtype=torch.int64, device=self.device)  # each query's place in its window
        slot[cell] = ((ry % win) * win + rx % win)[order]
        out = torch.empty(len(used) * m, C, dtype=self.dtype, device=self.device)
        per = max(1, CHUNK // (win * wp))
        bounds = torch.searchsorted(used, torch.arange(0, nh + per, per, device=used.device) * nw).tolist()
        for j, b in enumerate(window_bands(h, shift, win, per)):
            u0, u1 = bounds[j], bounds[j + 1]  # the used windows in this band
            if u0 == u1:
                continue
            local = used[u0:u1] - b.r0 * nw
            kv = self._band_windows(x, ids, k, i, b, 2).view(b.nr, win, nw, win, 2 * C)
            kv = kv.permute(0, 2, 1, 3, 4).reshape(b.nr * nw, L, 2 * C)
            if u1 - u0 < b.nr * nw:
                kv = kv.index_select(0, local)
            kv = kv.view(u1 - u0, L, 2, heads, hd).permute(2, 0, 3, 1, 4)
            qc = q[u0 * m:u1 * m].view(u1 - u0, m, heads, hd).transpose(1, 2)
            bias = self.rel[i][:, slot[u0 * m:u1 * m].view(u1 - u0, m)].transpose(0, 1)  # (windows, heads, M, L)
            valid = band_validity(w, shift, win, b, self.device).index_select(0, local)
            out[u0 * m:u1 * m].view(u1 - u0, m, heads, hd).copy_(self._attend(qc, kv[0], kv[1], bias, valid).transpose(1, 2))
        att = torch.empty(len(rows), C, dtype=self.dtype, device=self.device)
        att[order] = out[cell]
        del out, q
        xr = x.view(-1, C)[rows]  # a fresh tensor: the rows needed
        _rowwise_add_(xr, lambda r: self._linear(r, f"b{i}.proj"), att)
        del att
        return _rowwise_add_(xr, lambda r: self._mlp(r, i))

    def _mlp(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return self._linear(self._linear(self._layernorm(x, f"b{i}.ln2"), f"b{i}.fc1").clamp_min(0), f"b{i}.fc2")

    def hidden(self, tokens: torch.Tensor, k: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (H,W) int64 with K = [MASK] -> final normalised features (H,W,dim), integers
        in `self.dtype`; with `rows` (flat positions, int64), the features (N,dim) at those
        positions only: the last block's projection, MLP and the final layernorm then run on
        those rows alone (they act on each position by itself: the same integers). Every step
        works on chunks of about CHUNK tokens, which keeps large grids in cache; integer
        results do not depend on the chunking."""
        depth, dim = self.cfg.depth, self.cfg.dim
        if rows is not None:
            rows = rows.to(self.device)
        with reuse_large_blocks(tokens.numel() >= LARGE_GRID_TOKENS and self.device.type == "cpu"):
            tokens = tokens.to(self.device)
            x = _lookup(self.p[f"emb.{k}"], tokens)
            for i in range(depth):
                if i == depth - 1 and rows is not None:
                    x = self._last_block(x, tokens, k, i, rows)
                else:
                    self._block_(x, tokens, k, i)
            if rows is not None and depth == 0:
                x = x.reshape(-1, dim)[rows]
            return _rowwise_into(lambda r, o: self._layernorm(r, "ln_out", o), x)

    def logits(self, feats: torch.Tensor, k: int) -> torch.Tensor:
        """Features (N,dim) -> integer logits (N,K) in units of 2**-8, int64."""
        return self._linear(feats.to(self.dtype), f"head.{k}").to(torch.int64)

    def logits_at(self, tokens: torch.Tensor, k: int, positions: torch.Tensor) -> torch.Tensor:
        """Integer logits (N,K), on the CPU, for the flat positions given, from one forward pass."""
        return self.logits(self.hidden(tokens, k, positions), k).cpu()

    def float_twin(self) -> Prior:
        """A float Prior with the dequantised weights: close to, but not bit-identical with,
        this evaluation. Rate control uses it only to estimate file sizes; files are always
        coded with the exact tables."""
        if self._twin is None:
            cfg, t = self.cfg, {n: v.cpu().double() for n, v in self.t.items()}
            twin = Prior(cfg)
            hd = cfg.dim // cfg.heads

            def lin(mod, name, out_scale=None):
                w = (t[f"{name}.w"] * t[f"{name}.m"] / (1 << SCALE_SHIFT)).t()
                b = t[f"{name}.b"] / (1 << ACT_BITS)
                if out_scale is not None:
                    w, b = w * out_scale[:, None], b * out_scale
                mod.weight.copy_(w)
                mod.bias.copy_(b)

            def ln(mod, name):
                mod.weight.copy_(t[f"{name}.g"] / (1 << GAMMA_BITS))
                mod.bias.copy_(t[f"{name}.b"] / (1 << ACT_BITS))

            with torch.no_grad():
                for k in cfg.codebooks:
                    twin.emb[str(k)].weight.copy_(t[f"emb.{k}"] / (1 << ACT_BITS))
                    lin(twin.head[str(k)], f"head.{k}")
                unscale = torch.ones(3 * cfg.dim, dtype=torch.float64)
                unscale[:cfg.dim] = hd ** 0.5  # the exact model folds 1/sqrt(hd) into q
                for i, blk in enumerate(twin.blocks):
                    ln(blk.ln1, f"b{i}.ln1")
                    lin(blk.qkv, f"b{i}.qkv", unscale)
                    blk.rel.copy_(t[f"b{i}.rel"] / (1 << ACT_BITS))
                    lin(blk.proj, f"b{i}.proj")
                    ln(blk.ln2, f"b{i}.ln2")
                    lin(blk.fc1, f"b{i}.fc1")
                    lin(blk.fc2, f"b{i}.fc2")
                ln(twin.ln_out, "ln_out")
            self._twin = twin.eval().to(self.device)
        return self._twin

    def counts(self, tokens: torch.Tensor, k: int, positions: torch.Tensor) -> torch.Tensor:
        """Integer count tables (N,K) for the flat positions given, from one forward pass."""
        return counts_from_logits(self.logits_at(tokens, k, positions), self.exp.cpu())


def counts_from_logits(logits: torch.Tensor, exp: torch.Tensor, temperature_milli: int = 1000) -> torch.Tensor:
    """Integer logits (N,K) -> integer counts (N,K), each >= 1, each row summing to <= 2**20.
    `temperature_milli` divides the logits by T = temperature_milli / 1000 (integer arithmetic)."""
    k = logits.shape[-1]
    if temperature_milli != 1000:
        logits = torch.div(logits * 1000, temperature_milli, rounding_mode="floor")
    m = logits.amax(-1, keepdim=True)
    w = _lookup(exp.to(logits.device), (m - logits).clamp_max_(exp.numel() - 1))
    total = w.sum(-1, keepdim=True)
    return torch.div(w * ((1 << COUNT_BITS) - k), total, rounding_mode="floor") + 1
