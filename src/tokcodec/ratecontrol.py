"""Rate control: which setting (codebook, mask mode, edge-block share) and which tone and colour
correction give the best expected quality whose whole file fits the budget.

The token search visits groups of settings in order of expected quality (a table of decoded
PSNR measured on training photos) and binary-searches the largest edge-block share that fits,
deciding clearly-over and clearly-under settings from the float twin's size estimate and coding
exactly only those near the budget. The correction is then traded against token bytes
(`RateControl.encode_analysed`), scored by PSNR and colour error. Which blocks an edge mode
keeps is `Codec.block_scores` (rate-distortion by default). `Codec` (codec.py) inherits these
methods.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from . import container, correction, entropy, errors, mask, schedule
from .container import Container, Header
from .correction import with_correction
from .errors import ArgumentTypeError, CodecError
from .metrics import ciede2000, colour_error_lab, image_to_tensor, ms_ssim, region_lab, srgb_to_lab
from .precision import native_bf16
from .prior import COUNT_BITS

# edge-block shares tried by rate control. Steps of 1% below 10% were tried (session 6): at
# 0.005 bpp they let the first token file fill the budget, and the correction grid, predicted
# from that file, then lost its bytes: kodim02 21.13 -> 20.99 dB (rd blocks), 21.13 -> 20.07
# (edge blocks). Until the grid/token trade-off is measured rather than predicted, 5% steps.
QUANTILES = tuple(i / 20 for i in range(19))
# Rate control codes exactly only the settings whose estimated size lies between one 32-bit
# word below the budget and 0.2% + 8 bytes above it. The float twin's estimate is never below
# the exact size: 3,466 of 3,466 settings measured (session 19: the 24 Kodak images at full,
# 1/2 and 3/8 size, every codebook, mode and five edge shares, estimate - size 0 or 4 bytes;
# the 12-MP mosaic and a 3.5-MP crop of it, 0.19-0.24% above, its 1.002 factor covering the
# coder's overhead), so an estimate a word or more under the budget fits as it stands (until
# session 18 the margin below was 0.2% + 8 bytes too: the same decisions, more exact encodes).
ESTIMATE_MARGIN = 0.002
ESTIMATE_SLACK = 8
ESTIMATE_BELOW = 4
# rd tokens cost 0-6% more bytes than the nearest codewords (docs/rdo.md); a setting whose
# estimate with the nearest codewords is over the budget by more than this is taken as over
ROUGH_MARGIN = 0.05
# A group's bound (`RateControl.group_bounds`) counts settings whose nearest-codeword file is
# within this share above the budget as fitting
BOUND_MARGIN = 0.02
BOUND_STEPS = 2  # interpolation steps narrowing a group's bound (`RateControl.group_bounds`)
# Tone and colour correction grids tried by rate control: cell sides in tokens (x16 px) and
# quantiser steps (Y, CbCr) in 8-bit levels. The coarse cells (12-32 tokens, down to a single
# cell for a small image) cost 13-20 bytes: what a file whose smallest token setting nearly
# fills the budget can still afford (Kodak 0.005 bpp, kodim08: 10.65 -> 11.97 dB with 21 spare
# bytes). The fine steps (8, 4) to (4, 2) and the chroma-only ones (Y step 255: every Y value
# rounds to 0 and costs almost nothing) are what 0.02-0.03 bpp files take (docs/colour.md 9).
CORRECTION_CELLS = (2, 3, 4, 6, 8, 12, 16, 32)
CORRECTION_STEPS = ((12, 6), (16, 8), (24, 12), (24, 4), (32, 6), (8, 4), (6, 3), (4, 2), (255, 3), (255, 5))
# The predicted cost of taking bytes from the tokens, in dB of PSNR per e-fold of token bytes,
# by bits per pixel of the size the photo is shown at (Kodak, v2 weights: 4.2 dB from 0.005 to
# 0.01 bpp, 3.3 to 0.02, 2.3 to 0.03; interpolated in log bpp between the middles of those
# ranges, held beyond them)
CORRECTION_SLOPES = ((0.0071, 4.2), (0.0141, 3.3), (0.0245, 2.3))
# dB of predicted PSNR a grid may give up per unit of colour error it removes (mean CIEDE2000
# of the corrected decode, both images box-downscaled 16x): colour drift over whole regions
# (a red macaw turning orange) is what people see first at these rates
COLOUR_WEIGHT = 0.2
# The correction trade is predicted (`correction_slope`); the best CORRECTION_TRIALS distinct
# files by prediction are made and the one of highest measured quality (PSNR less
# COLOUR_WEIGHT x colour error, of the file's own decode) kept. Grids over TRIAL_MAX_TOKENS
# tokens (about 4 MP) keep the first: each trial costs an exact encode and a decode.
CORRECTION_TRIALS = 3
TRIAL_MAX_TOKENS = 16384
RECONSTRUCT_CACHE_BYTES = 64 << 20  # decodes rate control keeps for the correction search
# How hard rate control searches (`RateControl.encode`'s effort): "full" searches coded scales,
# makes CORRECTION_TRIALS files and polishes the winner's tokens; "fast" codes at the predicted
# scale, makes one file and does not polish (docs/performance.md, session 14)
EFFORTS = ("full", "fast")
CORRECTION_MAX_SHARE = 1.0  # largest share of the budget a grid may take (1.0: only the half-of-tokens rule)
# Photos over SCORE_MAX_PIXELS predict each candidate grid's quality on the decode box-reduced
# by SCORE_FACTOR (`grid_quality`): a 12-MP photo scored its 81 candidates at full size in 12 s
SCORE_MAX_PIXELS = 1 << 22
SCORE_FACTOR = 4


def unreachable(budget: int, smallest: "EncodeResult", size: tuple[int, int]) -> str:
    """The message of a TargetError: the target and the smallest file, in bytes and in bits per
    pixel of `size` (the size the file is shown at)."""
    w, h = size
    return (f"target {8 * budget / (w * h):.4f} bpp ({budget} bytes) cannot be reached for this image; "
            f"the smallest setting gives {8 * len(smallest.data) / (w * h):.4f} bpp ({len(smallest.data)} bytes)")


class TargetError(CodecError):
    """The target is below the smallest setting's file; `smallest` is that file (an exact encode)."""

    def __init__(self, msg: str, smallest: "EncodeResult"):
        super().__init__(msg)
        self.smallest = smallest


@dataclass(frozen=True)
class Setting:
    codebook: int
    mode: str
    quantile: float = 0.0

    @property
    def kept_share(self) -> float:
        return {"entire": 1.0, "checkerboard": 0.5, "edge": 0.5 + 0.5 * self.quantile,
                "edge_more": 0.25 + 0.75 * self.quantile}[self.mode]


# Rate control's quality model: mean decoded PSNR (dB, temperature 0) per codebook and mask
# mode, and for the edge modes per edge-block share (QUALITY_QUANTILES, interpolated between),
# measured on training photos (never Kodak) by `python -m tokcodec.train quality`.
QUALITY_QUANTILES = (0.0, 0.25, 0.5, 0.75, 0.9)
# Measured for model 703cb306 on 24 training photos (temperature 0), one table per fidelity
# decoder (the encoder fits its files to its newest, spec 8.4); other weights fall back to a
# rough model.
QUALITY_MODEL = "703cb306"

QUALITY: dict[int, dict[str, list[float]]] = {  # decoder 0 (weights v2)
    1024: {"entire": [22.53], "checkerboard": [18.16],
           "edge": [18.16, 19.97, 21.29, 22.17, 22.44],
           "edge_more": [14.17, 16.96, 19.2, 21.42, 22.26]},
    256: {"entire": [21.83], "checkerboard": [17.99],
           "edge": [17.99, 19.67, 20.74, 21.52, 21.76],
           "edge_more": [14.4, 16.94, 18.91, 20.9, 21.64]},
    64: {"entire": [20.9], "checkerboard": [17.62],
           "edge": [17.62, 19.07, 19.98, 20.64, 20.83],
           "edge_more": [14.09, 16.46, 18.36, 20.12, 20.72]},
    16: {"entire": [19.75], "checkerboard": [17.26],
           "edge": [17.26, 18.31, 19.01, 19.51, 19.67],
           "edge_more": [14.19, 16.12, 17.61, 19.08, 19.57]},
}


QUALITY_DECODER_1: dict[int, dict[str, list[float]]] = {  # decoder 1 (weights v4), 24 training photos
    1024: {"entire": [23.48], "checkerboard": [19.03],
           "edge": [19.03, 21.89, 22.89, 23.36, 23.47],
           "edge_more": [15.42, 19.73, 21.84, 23.01, 23.39]},
    256: {"entire": [22.87], "checkerboard": [18.81],
           "edge": [18.81, 21.42, 22.32, 22.73, 22.84],
           "edge_more": [15.48, 19.51, 21.47, 22.46, 22.76]},
    64: {"entire": [21.97], "checkerboard": [18.38],
           "edge": [18.38, 20.68, 21.52, 21.88, 21.97],
           "edge_more": [15.16, 19.05, 20.81, 21.65, 21.91]},
    16: {"entire": [20.47], "checkerboard": [17.7],
           "edge": [17.7, 19.54, 20.22, 20.46, 20.5],
           "edge_more": [14.92, 18.2, 19.6, 20.25, 20.43]},
}

QUALITY_RD_DECODER_1: dict[int, dict[str, list[float]]] = {  # decoder 1, tokens chosen by refine.py (6 steps)
    1024: {"entire": [23.94], "checkerboard": [19.25],
           "edge": [19.25, 22.14, 23.26, 23.75, 23.9],
           "edge_more": [15.46, 19.89, 22.12, 23.4, 23.82]},
    256: {"entire": [23.39], "checkerboard": [18.9],
           "edge": [18.9, 21.7, 22.7, 23.21, 23.34],
           "edge_more": [15.72, 19.71, 21.76, 22.89, 23.26]},
    64: {"entire": [22.58], "checkerboard": [18.6],
           "edge": [18.6, 21.1, 21.99, 22.43, 22.55],
           "edge_more": [15.35, 19.31, 21.16, 22.15, 22.49]},
    16: {"entire": [21.56], "checkerboard": [18.27],
           "edge": [18.27, 20.3, 21.08, 21.43, 21.53],
           "edge_more": [15.37, 18.78, 20.31, 21.14, 21.45]},
}

# per token rule (Codec.analyse's `tokens`), per fidelity decoder; `make fit-quality` measures
# the rd table, `--tokens nearest` the other
QUALITY_BY_DECODER = {"nearest": {0: QUALITY, 1: QUALITY_DECODER_1}, "rd": {1: QUALITY_RD_DECODER_1}}


def expected_quality(s: Setting, table: dict | None = None) -> float:
    """Rate control's estimate of decoded quality in dB (higher is better)."""
    row = (table or {}).get(s.codebook, {}).get(s.mode)
    if row is None:  # a model without a measured table: a rough prior by share and K
        dropped = 1.0 - s.kept_share
        base = {16: 19.4, 64: 20.7, 256: 21.7, 1024: 22.4}.get(s.codebook, 10 * np.log10(s.codebook) / 3 + 18)
        return base - dropped * max(1.0, 1.5 * np.log2(s.codebook) - 4.0) - 3.0 * dropped ** 2 + 1e-3 * s.kept_share
    q = float(np.interp(s.quantile, QUALITY_QUANTILES, row)) if len(row) > 1 else row[0]
    return q + 1e-3 * s.kept_share  # ties go to the setting that keeps more


def correction_slope(budget: int, size: tuple[int, int]) -> float:
    """CORRECTION_SLOPES at the budget's bits per pixel of `size`: the size the photo is shown
    at. (Priced at a reduced copy's own rate, 3-8x the target's, grid bytes came too cheap:
    copies went to 16-word codebooks for finer grids, Kodak 0.005 bpp SSIMULACRA2 -82.6 -> -86.6.)"""
    bpp = 8 * budget / max(size[0] * size[1], 1)
    x, y = zip(*CORRECTION_SLOPES)
    return float(np.interp(np.log(max(bpp, 1e-9)), np.log(x), y))


def squared_error(a: np.ndarray, b: np.ndarray, rows: int = 256) -> int:
    """Sum of squared differences of two uint8 images (H, W, C), exact, in bands of `rows` rows
    (a 12-MP photo's whole difference and its square took 280 MB at once)."""
    return sum(int(np.square(a[y:y + rows].astype(np.int32) - b[y:y + rows]).sum(dtype=np.int64))
               for y in range(0, a.shape[0], rows))


def measured_quality(rgb: np.ndarray, lab, out: np.ndarray, weight: float | None = None) -> float:
    """Rate control's measure of a decode `out` of the image `rgb` (both uint8, same shape):
    PSNR less `weight` (default COLOUR_WEIGHT) x colour error (`lab`: region_lab(rgb))."""
    weight = COLOUR_WEIGHT if weight is None else weight
    psnr = 10 * np.log10(255.0 ** 2 * rgb.size / max(float(squared_error(out, rgb)), 1e-9))
    return psnr - weight * colour_error_lab(lab, out) if weight else psnr


def grid_quality(rgb: np.ndarray, lab: np.ndarray, decoded: np.ndarray):
    """The function corr -> measured_quality(rgb, lab, correction.apply(decoded, corr)) with which
    rate control ranks candidate correction grids. Colour photos over SCORE_MAX_PIXELS get a
    prediction of it from copies box-reduced by f = SCORE_FACTOR: the grid's offsets c are
    smooth (cells of 32 px and more), so with e = original - decoded, sum((e - c)**2) - sum(e**2)
    = sum(c**2 - 2 e c) is f**2 times the same sum over the reduced copies, and the full-size
    squared error of each option is the exact one without a grid plus that change; the colour
    error compares the reduced corrected decode, reduced again to regions of 16 px. (The decode
    is corrected by offsets rounded to whole levels: 1/12 level**2 more squared error per
    sample, taken as uncorrelated with the rest.)"""
    h, w, _ = rgb.shape
    f = SCORE_FACTOR
    if h * w <= SCORE_MAX_PIXELS or correction.is_grey(rgb) or 16 % f:
        return lambda corr: measured_quality(rgb, lab, correction.apply(decoded, corr))
    hs, ws = h // f, w // f
    hr, wr = lab.shape[:2]

    def box_sum(x: np.ndarray, n: int, m: int, k: int, dtype=None) -> np.ndarray:
        """Means of k x k boxes of x (H, W, C): sums over rows of boxes, then across (two
        contiguous reductions; exact for a uint8 image summed in integers)."""
        rows = x[:n * k, :m * k].reshape(n, k, -1).sum(1, dtype=dtype)
        return rows.reshape(n, m, k, -1).sum(2, dtype=dtype) / (k * k)
    base_sse = float(squared_error(decoded, rgb)) / (h * w)  # per pixel, every channel
    dec_s = box_sum(decoded, hs, ws, f, np.int64)
    e_s = box_sum(rgb, hs, ws, f, np.int64) - dec_s
    base_s = float(np.square(e_s).sum()) / (hs * ws)

    def quality(corr: correction.Correction) -> float:
        c = correction.reduced_offsets(corr, w, h, f) if corr.cell else 0.0
        sse = base_sse + float(np.square(e_s - c).sum()) / (hs * ws) - base_s + (0.25 if corr.cell else 0.0)
        psnr = 10 * np.log10(255.0 ** 2 * 3 / max(sse, 1e-9))
        region = box_sum(np.clip(dec_s + c, 0, 255), hr, wr, 16 // f)
        return psnr - COLOUR_WEIGHT * float(ciede2000(lab, srgb_to_lab(region)).mean())
    return quality


@dataclass
class EncodeResult:
    data: bytes
    setting: Setting
    tokens_total: int
    tokens_kept: int
    token_bits: int
    mask_bits: float
    info_bits: float
    coded_size: tuple[int, int] | None = None  # the coded image's size where smaller than the photo


@dataclass(frozen=True)
class Planned:
    """A token setting chosen by rate control, not yet coded: `size` is its exact size in bytes
    if known, else the estimate (which lies at or above it); None without a budget."""
    setting: Setting
    size: int | None


class RateControl:
    """Rate control methods of `codec.Codec` (which provides analyse, tokens_for, encode_setting,
    _mask, _code_stages, generate, render, model and device)."""

    def groups(self, codebook: int | None, mode: str | None, quantile: float | None) -> list[list[Setting]]:
        """Candidate settings in groups whose file size grows along the list (edge-block share)."""
        out = []
        for k in self.model.codebooks:
            if codebook is not None and k != codebook:
                continue
            for m in ("entire", "checkerboard", "edge", "edge_more"):
                if mode is not None and m != mode:
                    continue
                if m in mask.USES_BLOCKS:
                    qs = (quantile,) if quantile is not None else QUANTILES
                    out.append([Setting(k, m, q) for q in qs])
                else:
                    out.append([Setting(k, m)])
        return out

    def encode(self, image: Image.Image, bpp: float | None = None, nbytes: int | None = None,
               codebook: int | None = None, mode: str | None = None,
               quantile: float | None = None, correct: bool = True, blocks: str = "rd",
               tokens: str = "rd", scale: float | None = None, effort: str = "full") -> EncodeResult:
        """Encode with the setting of highest expected quality whose whole file fits the target
        (or, without a target, the richest setting allowed by the other options); `nbytes`
        wins over `bpp`. `correct`: add a tone and colour correction where it pays. `blocks`:
        how edge modes choose their blocks ("rd" or "edge", `Codec.block_scores`). `tokens`:
        which codeword each position codes ("rd" or "nearest", `Codec.tokens_for`). `scale`:
        the coded scale (a fraction of width and height, 0 < scale <= 1); None: the best of
        several (scalecontrol.py) when there is a target, else 1. `effort`: "full" searches
        coded scales, makes CORRECTION_TRIALS correction options and polishes the tokens;
        "fast" codes at the predicted scale, makes one option and does not polish (2-4x
        faster below 0.015 bpp, 10-20% above; docs/performance.md, session 14)."""
        if not isinstance(image, Image.Image):
            raise ArgumentTypeError(f"image must be a PIL image, got {type(image).__name__}")
        bpp, nbytes, codebook, mode, quantile = self.check_encode_options(bpp, nbytes, codebook, mode, quantile)
        if scale is not None:
            scale = errors.check_real("scale", scale, 0.0, 1.0, lo_open=True)
        w, h = image.size
        budget = int(nbytes) if nbytes is not None else (
            int(np.floor(bpp * w * h / 8)) if bpp is not None else None)
        if scale == 1.0 or (scale is None and budget is None):  # one analysis, no resampling
            return self.encode_analysed(self.analyse(image, blocks, tokens, effort), budget, codebook, mode,
                                        quantile, correct=correct)
        return self.encode_prepared(self.prepare(image, blocks, tokens, effort), budget, codebook, mode,
                                    quantile, correct, scale)

    def check_encode_options(self, bpp, nbytes, codebook, mode, quantile) -> tuple:
        """Validated encoder options (ArgumentError naming the option and its allowed values)."""
        if bpp is not None:
            bpp = errors.check_real("bpp", bpp, 0.0, None, lo_open=True)
        if nbytes is not None:
            nbytes = errors.check_int("nbytes", nbytes, 1)
        if codebook is not None:
            codebook = errors.check_choice("codebook", codebook, self.model.codebooks)
        if mode is not None:
            mode = errors.check_choice("mode", mode, container.MODES)
        if quantile is not None:
            quantile = errors.check_real("quantile", quantile, 0.0, 1.0)
        return bpp, nbytes, codebook, mode, quantile

    def encode_analysed(self, a: dict, budget: int | None, codebook: int | None = None,
                        mode: str | None = None, quantile: float | None = None,
                        allowed=None, correct: bool = True, polish: bool = True,
                        shown: tuple[int, int] | None = None) -> EncodeResult:
        """Rate control over tokens and tone/colour correction (correction.py). Plan the tokens
        at the whole budget (setting and size, `encode_tokens(plan=True)`: no exact coding yet),
        decode them, and predict for each correction grid what it gains (PSNR of that decode
        corrected, less COLOUR_WEIGHT x its colour error) and what its bytes cost the tokens
        (`correction_slope` dB per e-fold of token bytes). Then make the files of the best
        options by prediction: tokens coded at the budget less the grid's bytes, the grid
        refitted to their decode; if the refitted grid overflows, the token budget shrinks by
        the overflow (up to three times). (Giving bytes a refitted grid leaves over back to the
        tokens changed none of 96 Kodak files, 0.005-0.03 bpp, and cost a token search and a
        decode each: removed in session 13.) Of the first CORRECTION_TRIALS distinct files, keep the
        one whose own decode measures best, and polish its tokens (`_polished`; `polish=False`
        leaves them). `shown`: the size the file is shown at (default the analysis's), whose
        rate prices the grid's bytes. Every file returned is at or under the budget."""
        if not correct or "rgb" not in a:
            return self.encode_tokens(a, budget, codebook, mode, quantile, allowed)
        rgb = a["rgb"]
        grey = correction.is_grey(rgb)
        try:  # the first token file is only planned: its setting and (estimated) size
            first = self.encode_tokens(a, budget, codebook, mode, quantile, allowed, plan=True)
        except TargetError as e:  # the smallest file offered instead still keeps a grey image grey
            if grey:
                e.smallest = dataclasses.replace(e.smallest, data=with_correction(
                    e.smallest.data, correction.Correction(0, True)))
            raise
        d0 = self.reconstruct(first, a)
        lab = region_lab(rgb)
        # PSNR of the first file's decode, corrected, less COLOUR_WEIGHT x its colour error
        quality = grid_quality(rgb, lab, d0)

        def quality_of(out: np.ndarray) -> float:
            return measured_quality(rgb, lab, out)

        token_bytes = first.size if budget is not None else len(self.exact(a, first.setting).data)
        no_grid = correction.Correction(0, grey)
        options = [(quality(no_grid), correction.extension_bytes(no_grid) if grey else 0, None)]
        sums = correction.block_sums(rgb, d0)
        for cell in CORRECTION_CELLS:
            gh, gw = correction.grid_shape(*a["size"], cell)
            if gh * gw < 1:
                continue
            means = correction.cell_means(sums, cell, a["size"])
            for steps in CORRECTION_STEPS:
                corr = correction.fit(rgb, d0, cell, steps, grey, means=means)
                cost = correction.extension_bytes(corr)
                if budget is not None and cost > min(token_bytes // 2 - 1, CORRECTION_MAX_SHARE * budget):
                    continue
                options.append((quality(corr), cost, (cell, steps)))
        slope = correction_slope(budget, shown or a["size"]) if budget is not None else 0.0
        room = token_bytes if budget is None else budget  # bytes the first file left unused are free

        def score(o):
            return o[0] - slope * np.log(room / max(room - o[1], 1)) if o[1] > room - token_bytes else o[0]
        ranked = sorted(options, key=score, reverse=True)

        small = a["strength"].size * 4 <= TRIAL_MAX_TOKENS
        fast = a.get("effort") == "fast"
        trials = CORRECTION_TRIALS if budget is not None and small and not fast else 1

        def realise(cost, cfg) -> EncodeResult | None:
            """The file of one option: tokens at the budget less the grid's predicted bytes, the
            grid refitted to their decode (None: no such file fits)."""
            tokens_budget = None if budget is None else budget - cost
            for _ in range(3):
                try:  # the first file is reused when the grid fits in the bytes it left unused
                    res = (self.exact(a, first.setting) if tokens_budget is None or first.size <= tokens_budget
                           else None)
                    if res is None or (tokens_budget is not None and len(res.data) > tokens_budget):
                        res = self.encode_tokens(a, tokens_budget, codebook, mode, quantile, allowed)
                except TargetError:
                    return None
                if cfg is None and not grey:  # no grid, and nothing to mark
                    return res
                if cfg is None:
                    corr = correction.Correction(0, grey)
                else:  # a single trial's file is the one kept: its grid is fitted to its exact
                    # decode here, which `_exact_grid` would make anyway (no preview besides)
                    corr = correction.fit(rgb, self.reconstruct(res, a, exact=trials == 1), cfg[0], cfg[1], grey)
                data = with_correction(res.data, corr)
                if budget is None or len(data) <= budget:
                    return dataclasses.replace(res, data=data)
                tokens_budget -= len(data) - budget
            return None

        def measured(r: EncodeResult) -> float:
            corr = correction.correction_of(r.data)
            out = self.reconstruct(r, a)
            return quality_of(out if corr is None else correction.apply(out, corr))

        done: list[EncodeResult] = []
        for _, cost, cfg in ranked:
            r = realise(cost, cfg)
            if r is not None and all(r.data != d.data for d in done):
                done.append(r)
                if len(done) >= trials:
                    break
        if not done:  # no grid fits: the tokens alone
            return self.encode_tokens(a, budget, codebook, mode, quantile, allowed)
        best = done[0] if len(done) == 1 else max(done, key=measured)
        best = self._exact_grid(a, best, budget, grey)
        return self._polished(a, best, budget, grey, quality_of) if polish and not fast else best

    def _polished(self, a: dict, best: EncodeResult, budget: int | None, grey: bool, quality_of) -> EncodeResult:
        """`best` (its grid fitted to its exact decode, `_exact_grid`) with its kept tokens
        polished (`Codec.polish`) and its correction grid refitted to their exact decode, if
        that file fits the budget and its own decode (temperature 0, realism 0, corrected) is
        better by `quality_of` and no worse by MS-SSIM; else `best`."""
        corr = correction.correction_of(best.data)
        cell = corr.cell if corr is not None else 0
        got = self.polish(a, best, cell)
        if got is None:
            return best
        r2, a2 = got
        corr2 = correction.fit(a["rgb"], self.reconstruct(r2, a2, exact=True), cell, corr.steps, grey) if cell else corr
        data = r2.data if corr2 is None else with_correction(r2.data, corr2)
        if budget is not None and len(data) > budget:
            return best

        def decoded(r: EncodeResult, a: dict, c) -> np.ndarray:  # exact: the polish is judged on what decoders draw
            out = self.reconstruct(r, a, exact=True, precise=True)
            return out if c is None else correction.apply(out, c)
        old, new = decoded(best, a, corr), decoded(r2, a2, corr2)
        ref = image_to_tensor(Image.fromarray(a["rgb"])).double()
        if (quality_of(new) > quality_of(old) and
                float(ms_ssim(ref, image_to_tensor(Image.fromarray(new)).double())[0])
                >= float(ms_ssim(ref, image_to_tensor(Image.fromarray(old)).double())[0])):
            return dataclasses.replace(r2, data=data)
        return best

    def reconstruct(self, r: EncodeResult, a: dict, exact: bool = False, precise: bool = False) -> np.ndarray:
        """What a decoder draws from an encode (temperature 0, fidelity decoder, no correction).
        `exact=False`: a preview, the dropped tokens generated by the float twin of the prior
        (`Codec.generate`); rate control compares files by their previews and fits the final
        file's grid to its exact decode (`_exact_grid`). The last RECONSTRUCT_CACHE_BYTES of
        decodes are kept in the analysis: the correction search asks again for files it has
        seen. The pixels are drawn in bfloat16 where the device computes it natively
        (precision.py; within 1-2 levels of a decoder's float32 pixels) unless `precise`: the
        float32 pixels of a decode at realism 0, for the polish's final judgement."""
        seen = a.setdefault("reconstructed", {})
        key = (r.setting, exact or r.setting.mode == "entire", precise)  # entire: nothing is generated
        if key not in seen:
            out = self._reconstruct(r, a, exact, precise)
            while seen and (len(seen) + 1) * out.nbytes > RECONSTRUCT_CACHE_BYTES:
                del seen[next(iter(seen))]
            seen[key] = out
        return seen[key]

    def _reconstruct(self, r: EncodeResult, a: dict, exact: bool = True, precise: bool = False) -> np.ndarray:
        s = r.setting
        tokens = self.tokens_for(a, s.codebook)
        _, keep = self._mask(a, s, tokens.shape)
        full = self.generate(tokens, keep, s.codebook, 0, 0.0, exact=exact) if not keep.all() else tokens
        return np.asarray(self.render(full, s.codebook, a["size"], 0.0, 0, self.model.fidelity, fast=not precise))

    def _exact_grid(self, a: dict, r: EncodeResult, budget: int | None, grey: bool) -> EncodeResult:
        """The file `r` with its correction grid refitted (same cell and steps) to the exact
        decode of its tokens, where rate control fitted it to a preview that generated some
        dropped tokens differently; kept only if the file still fits (else `r`, whose grid is
        valid too, fitted to a decode a few tokens away)."""
        corr = correction.correction_of(r.data)
        if corr is None or not corr.cell or r.setting.mode == "entire":
            return r
        fitted = correction.fit(a["rgb"], self.reconstruct(r, a, exact=True), corr.cell, corr.steps, grey)
        data = with_correction(r.data, fitted)
        return dataclasses.replace(r, data=data) if budget is None or len(data) <= budget else r

    def encode_tokens(self, a: dict, budget: int | None, codebook: int | None = None,
                      mode: str | None = None, quantile: float | None = None,
                      allowed=None, plan: bool = False) -> "EncodeResult | Planned":
        """Rate control of the tokens on an analysis from `analyse` (reusable across targets and modes:
        count tables computed for one target are cached in it for the next).

        The search visits groups of settings in order of expected quality and, within a group,
        binary-searches the largest edge-block share whose file fits. A setting whose estimated
        size (float prior, `estimate_bytes`) is clearly over or under the budget is decided
        without coding it; only settings whose estimate lies between ESTIMATE_BELOW bytes under
        and ESTIMATE_MARGIN + ESTIMATE_SLACK over the budget, and the winner, are coded exactly.
        The estimate is never below the exact size and, on Kodak-size files, at most one word
        above it, so there the decisions are those of exact sizes (a photo's estimate can lie
        up to 0.24% above: a setting within about 0.04% under the budget may be taken as over).
        The returned file is always an exact encode that fits.
        `allowed(setting)`, if given, removes settings (trim: those that keep a token the file
        lacks); within a group it must hold for a prefix. `plan`: return the winning setting
        and its size (`Planned`) without coding it exactly when the estimate decided it."""
        w, h = a["size"]
        groups = self.groups(codebook, mode, quantile)
        if allowed is not None:
            groups = [g for g in ([s for s in g if allowed(s)] for g in groups) if g]
        groups = sorted(groups, key=lambda g: -self.expected_quality(g[-1], a))
        if budget is None:
            return Planned(groups[0][-1], None) if plan else self.encode_setting(a, groups[0][-1])
        # exact encodes and estimates depend only on the analysis and the setting: every search
        # on this analysis (each target, each correction grid's token budget) shares them
        tried: dict[Setting, EncodeResult] = a.setdefault("exact", {})
        estimates: dict[Setting, float] = a.setdefault("estimated", {})

        def exact(s: Setting) -> EncodeResult:
            return self.exact(a, s)

        def estimate(s: Setting) -> float:
            if s not in estimates:
                # a codebook not yet refined (rd tokens) whose nearest codewords already
                # overflow clearly is decided without its refinement (a decoder pass per step)
                rough = self.rough_bytes(a, s)
                if rough is not None and rough > budget * (1 + ROUGH_MARGIN) + ESTIMATE_SLACK:
                    return rough
                estimates[s] = self.estimate_bytes(a, s)
            return estimates[s]

        def fits(s: Setting) -> bool:
            if s not in tried:
                est = estimate(s)
                if est > budget * (1 + ESTIMATE_MARGIN) + ESTIMATE_SLACK:
                    return False
                if est <= budget - ESTIMATE_BELOW:
                    return True
            return len(exact(s).data) <= budget

        bounds = self.group_bounds(a, groups, budget)
        for _ in range(3):
            best = self.search(groups, fits, a, bounds)
            if best is None:
                break
            # decided by its estimate, which lies above its size: planned at that size, unless
            # it is within 0.2% + 8 bytes of the budget, where the few bytes the estimate adds
            # are a real share of the room a correction grid gets (its exact size, then)
            if plan and best not in tried and estimate(best) < budget * (1 - ESTIMATE_MARGIN) - ESTIMATE_SLACK:
                return Planned(best, int(estimate(best)))
            r = exact(best)
            if len(r.data) <= budget:
                return Planned(best, len(r.data)) if plan else r
            # an estimate was off by more than the margin; `fits` now knows this setting's
            # exact size, so the next search does not pick it again
        else:  # estimates keep misleading: search on exact sizes only
            best = self.search(groups, lambda s: len(exact(s).data) <= budget, a)
            if best is not None:
                return Planned(best, len(exact(best).data)) if plan else exact(best)
        # nothing fits: name the smallest setting (by estimate; its size is exact)
        smallest = exact(min((g[0] for g in groups), key=estimate))
        raise TargetError(unreachable(budget, smallest, (w, h)), smallest)

    def exact(self, a: dict, s: Setting) -> EncodeResult:
        """The exact encode of a setting, kept in the analysis: every search on it shares them."""
        tried = a.setdefault("exact", {})
        if s not in tried:
            tried[s] = self.encode_setting(a, s)
        return tried[s]

    def group_bounds(self, a: dict, groups: list[list[Setting]], budget: int) -> dict[int, float] | None:
        """Upper bounds on what each group (by index) can give, for analyses whose codebooks
        are refined on demand (rd tokens, `tokens_for`: a decoder pass forward and backward per
        step, plus a generation and a decode per edge mode for the rd block ranking), so that
        rate control refines only codebooks that can win. A group's bound is the expected
        quality of its richest setting whose file, sized with the nearest codewords and blocks
        ranked by edge strength, fits BOUND_MARGIN above the budget: rd codewords cost as many
        bytes or more (0-6%, docs/rdo.md), so few settings fit by rd tokens that do not by this
        measure. Bounds are made lazily in order of the groups' best settings, until no further
        group can top the largest bound found. None where nothing would be saved."""
        if len({g[0].codebook for g in groups if self.refines(a, g[0].codebook)}) < 2:
            return None
        a.setdefault("estimates", {})
        rough = {**a, "blocks": "edge"}  # its stage tables shared with rough_bytes' (same tokens)
        cache = a.setdefault("bound_sizes", {})
        limit = budget * (1 + BOUND_MARGIN) + ESTIMATE_SLACK

        def size(s: Setting) -> float:
            if s not in cache:
                cache[s] = self.estimate_bytes(rough, s, self._nearest(rough, s.codebook))
            return cache[s]

        def bound(g: list[Setting]) -> float:
            """The expected quality of the richest setting of the group that may fit: sizes
            grow along the group, so a bracket (lo fits, hi does not) is narrowed by
            BOUND_STEPS steps of linear interpolation in size (regula falsi: fewer estimates
            than bisection on these smooth curves); the setting just below hi bounds it."""
            if size(g[0]) > limit:
                return -np.inf
            if len(g) == 1 or size(g[-1]) <= limit:
                return self.expected_quality(g[-1], a)
            lo, hi = 0, len(g) - 1
            for _ in range(BOUND_STEPS):
                if hi - lo < 2:
                    break
                m = lo + (hi - lo) * (limit - size(g[lo])) / (size(g[hi]) - size(g[lo]))
                m = min(max(int(round(m)), lo + 1), hi - 1)
                lo, hi = (m, hi) if size(g[m]) <= limit else (lo, m)
            return self.expected_quality(g[hi - 1], a)
        bounds: dict[int, float] = {}
        for i, g in enumerate(groups):  # in order of their best setting
            top = self.expected_quality(g[-1], a)
            if bounds and top <= max(bounds.values()):  # this group and the rest: their best is
                bounds.update({j: self.expected_quality(h[-1], a) for j, h in enumerate(groups) if j >= i})
                break  # the bound (searched only if the bounded ones disappoint)
            bounds[i] = bound(g)
        return bounds

    def search(self, groups: list[list[Setting]], fits, a: dict | None = None,
               bounds: dict[int, float] | None = None) -> Setting | None:
        """The setting of highest expected quality (for analysis `a`) that `fits`, groups in
        order of their best; with `bounds` (`group_bounds`), groups in order of their bound,
        those without one left out."""
        def eq(s: Setting) -> float:
            return self.expected_quality(s, a)
        best = None
        if bounds is not None:
            for i in sorted(bounds, key=lambda i: -bounds[i]):  # stop once no bound can beat the best found
                if bounds[i] == -np.inf or (best is not None and bounds[i] <= eq(best)):
                    break
                fit = self.search([groups[i]], fits, a)
                if fit is not None and (best is None or eq(fit) > eq(best)):
                    best = fit
            return best
        for g in groups:  # best upper bound first; stop once no group can beat the best found
            if best is not None and eq(g[-1]) <= eq(best):
                break
            lo, hi, fit = 0, len(g) - 1, None
            if len(g) > 2 and not fits(g[0]):  # sizes grow along a group: none of it fits. The
                continue  # smallest needs no block ranking (rd ranking costs a decode per group)
            while lo <= hi:  # largest edge-block share that fits
                mid = (lo + hi) // 2
                if fits(g[mid]):
                    fit, lo = g[mid], mid + 1
                else:
                    hi = mid - 1
            if fit is not None and (best is None or eq(fit) > eq(best)):
                best = fit
        return best

    @torch.no_grad()
    def estimate_bytes(self, a: dict, setting: Setting, tokens: np.ndarray | None = None) -> float:
        """Estimated file size of a setting from the float twin of the prior: the information
        content of the kept tokens and the block map, the coder's small overhead and the
        container's fixed bytes. Stage tables are cached in the analysis, keyed by context.
        `tokens`: the grid to size (default: the analysis' tokens for the codebook)."""
        k = setting.codebook
        tokens = self.tokens_for(a, k) if tokens is None else tokens
        grid = tokens.shape
        blocks, keep = self._mask(a, setting, grid)
        bits = [mask.block_bits(blocks) if blocks is not None else 0.0]
        flat = tokens.ravel()
        floor = 2.0 ** -COUNT_BITS  # as the integer tables: every symbol keeps 1 of 2**20
        # bfloat16 passes where the device runs them natively: estimates a few bits apart from
        # float32's, far inside the margins that decide by estimate (the 12-MP mosaic: the same
        # bytes, 3.6 s against 6.9 s per estimate; all 24 Kodak images at four targets: the
        # same 96 files; docs/performance.md, session 17)
        bf16 = native_bf16(self.device.type)

        def token_bits(ctx, k, pos):  # -log2 p(true token) at each position (sorted, flat)
            logp = torch.log_softmax(self.twin_logits(ctx, k, pos, bf16).float(), -1)
            p = logp.gather(1, torch.from_numpy(flat[pos]).to(self.device)[:, None])[:, 0].exp()
            return (-torch.log2(p * (1 - k * floor) + floor)).cpu()

        def step(pos, b):
            bits[0] += float(b.sum())
            return flat[pos]

        # the cached stage values are bits of the grid's own tokens: keyed by the grid too (the
        # nearest codewords' rough sizes and the rd codewords' estimates share stage 0's context)
        grid_id = (k, hashlib.sha1(np.ascontiguousarray(tokens)).digest())
        self._code_stages(grid, k, keep, step, a.setdefault("estimates", {}).setdefault(grid_id, {}), token_bits)
        w, h = a["size"]
        header = Header(w, h, self.model.model_id, k, setting.mode, 0,
                        schedule_id=schedule.SCHEDULE_ID, coder_id=entropy.CODER_ID,
                        minor=container.WRITE_MINOR, mask_check=0, decoder=self.model.fidelity)
        fixed = len(container.pack(Container(header, b"")))
        return fixed + 4 * np.ceil(bits[0] * 1.002 / 32)
