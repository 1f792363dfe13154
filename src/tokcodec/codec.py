"""The codec pipeline and the public Python API.

encode: image -> pad (replicate) to a multiple of 32 px -> tokenizer -> token grid
        -> keep mask (mode, edge blocks) -> block map and kept tokens range-coded stage by stage
           with count tables from the exact prior -> .tkc bytes; rate control (ratecontrol.py)
           picks the setting and the tone and colour correction (correction.py) that fit
decode: .tkc -> validate -> block map -> kept tokens stage by stage (same tables) -> token CRC
        -> dropped tokens generated from the prior in stage order (seeded) -> tokenizer decoder
        -> crop -> tone and colour correction -> image
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import inspect
import itertools
import os
import zlib

import numpy as np
import torch
from PIL import Image

from . import container, correction, detail, entropy, errors, mask, resample, schedule
from .container import Container, Header
from .errors import ArgumentError, ArgumentTypeError, CodecError, FormatError, TokcError
from .imageio import ImageError as _ImageError
from .memory import reuse_large_blocks, trim
from .precision import pixels_bf16
from .prior import LARGE_GRID_TOKENS, counts_from_logits
from .refine import pixel_error, refine
from .rng import LegacyGenerator, sample_at
from .weights import Model, WeightsError as _WeightsError, find as find_weights, load
from .correction import read_correction, with_correction  # noqa: F401 (part of this module's API)
from .scalecontrol import ScaleControl
from .ratecontrol import (EFFORTS, QUALITY, QUALITY_BY_DECODER, QUALITY_MODEL, QUANTILES,  # noqa: F401
                          EncodeResult, RateControl, Setting, TargetError, expected_quality)

# Realism used when the caller gives none (see README, "Realism"): chosen on training photos.
DEFAULT_REALISM = 0.6
BLOCK_CHOICES = ("rd", "edge")  # how edge modes choose their kept blocks (Codec.block_scores)
TOKEN_CHOICES = ("rd", "nearest")  # which codeword a position codes (Codec.tokens_for)
# Token choice for the decoder's pixels runs the pixel decoder forward and backward over the
# whole grid REFINE_STEPS + 1 times (about 50 MB per 1,000 tokens): grids over this (about
# 1 MP) keep the nearest codewords
REFINE_MAX_TOKENS = 4096
# The final file's kept tokens polished for the decoder's drawing of the dropped ones (Codec.polish)
POLISH_ROUNDS = 2
POLISH_STEPS = 4
POLISH_LAMBDA = 0.02  # rate weight: lambda = POLISH_LAMBDA x error / file bytes (per bit)
POLISH_MIN_GAIN = 0.005  # a polish that lowers its measure by less (about 0.02 dB) is dropped
# files that keep this share of their tokens or more are not polished: on Kodak they gained
# 0.01-0.02 dB from it at 0.02-0.03 bpp, for 2-3x the encode time (docs/rdo.md)
POLISH_MAX_KEPT = 0.75
# Grids over TILE_MAX_TOKENS tokens are decoded to pixels in windows of at most TILE tokens a
# side, each with TILE_MARGIN tokens of context around it: the decoder's receptive field is 15
# tokens (10 convolutions at token resolution, 7 at 2 px per token, 5 at 4 px per token), and the
# detail band's blur reaches 9 pixels (3 x SIGMA_MAX).
TILE_MAX_TOKENS = 16384
TILE = 128
TILE_MARGIN = 16
ENCODER_MARGIN = 8


def _spans(n: int) -> list[tuple[int, int]]:
    """0..n cut into ceil(n / TILE) near-equal spans."""
    parts = -(-n // TILE)
    cuts = [round(i * n / parts) for i in range(parts + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def _windows(gh: int, gw: int, margin: int):
    """The windows that cover an (gh, gw) token grid: for each, its core (y0, y1, x0, x1),
    written to the output, and the core grown by `margin` tokens of context within the grid
    (a0, a1, b0, b1), which is what gets computed."""
    for (y0, y1), (x0, x1) in itertools.product(_spans(gh), _spans(gw)):
        yield (y0, y1, x0, x1), (max(0, y0 - margin), min(gh, y1 + margin), max(0, x0 - margin), min(gw, x1 + margin))


DECODE_ROWS = 2048  # kept tokens range-decoded per call (`_stage_count_chunks`: bounded memory)
RD_MAX_TOKENS = 16384  # larger token grids choose blocks by edge strength (Codec.block_scores)
UNIT = 32  # pad to a multiple of two tokens so the 2x2 phase groups tile evenly


class WeightsError(TokcError, _WeightsError):
    """The model weights cannot be found or read, or do not fit together."""


class ImageError(TokcError, _ImageError):
    """An input image cannot be read."""


def check_ids(hd: Header) -> None:
    """Refuse schedule and coder ids this tokc does not implement (needs no model)."""
    if hd.schedule_id != schedule.SCHEDULE_ID:
        raise CodecError(f"file uses schedule {hd.schedule_id}, which this tokc does not implement; "
                         "upgrade tokc")
    if hd.coder_id not in entropy.CODERS:
        raise CodecError(f"file uses coder {hd.coder_id}, which this tokc does not implement; upgrade tokc")


def read_mask(c: Container) -> tuple[entropy.Decoder, np.ndarray]:
    """Start decoding a payload: read the block map (edge modes) and build the keep mask.
    Returns the decoder positioned at the first token."""
    hd = c.header
    check_ids(hd)
    dec = entropy.Decoder(c.payload, hd.coder_id)
    floor = container.token_floor_bits(hd.codebook)
    blocks = None
    if hd.mode in mask.USES_BLOCKS:
        tail = container.min_kept_tokens(hd) * floor
        blocks = mask.decode_blocks(dec, (hd.grid[0] // 2, hd.grid[1] // 2), tail)
    keep = mask.keep_mask(hd.mode, hd.grid, blocks)
    if hd.minor >= 2 and (got := container.mask_check(keep)) != hd.mask_check:
        raise entropy.DecodeError(f"its keep mask does not match the header's mask check "
                                  f"({got} != {hd.mask_check}): the width, height "
                                  "or mode in the header do not belong to this payload")
    dec.require(int(keep.sum()) * floor, f"its {int(keep.sum())} kept tokens")
    return dec, keep


def pad_image(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    ph, pw = -h % UNIT, -w % UNIT
    return np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="edge") if ph or pw else rgb


def to_pixels(x: torch.Tensor) -> np.ndarray:
    """Pixel decoder output (3, H, W) in [0, 1] -> uint8 (H, W, 3), rounded to nearest."""
    y = x.float().permute(1, 2, 0).cpu().numpy() * 255  # one float32 temporary, then in place
    y += 0.5
    return np.clip(y, 0, 255, out=y).astype(np.uint8)


def token_crc(tokens: list[np.ndarray]) -> int:
    flat = np.concatenate(tokens) if tokens else np.zeros(0, np.int64)
    return zlib.crc32(flat.astype("<u2").tobytes())


def _device(name: str) -> torch.device:
    if not isinstance(name, str) or not (name in ("auto", "cpu") or name.split(":")[0] == "cuda"):
        raise ArgumentError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CodecError("--device cuda was asked for but no CUDA device is available")
    return torch.device(name)


class Codec(ScaleControl, RateControl):
    def __init__(self, weights: str | None = None, device: str = "auto"):
        self.device = _device(device)
        check_weights_arg(weights)
        try:
            self.model: Model = load(weights, self.device)
        except _WeightsError as e:
            raise WeightsError(str(e)) from None
        self._blank: dict[int, torch.Tensor] = {}
        self._older: dict[bytes, Codec] = {}  # for_model's codecs of earlier priors
        # the tables describe the tokenizer and its decoders, measured with the base file's
        # prior; a newer prior of the same base leaves them valid (weights/README.md, version 5)
        ids = {m.hex() for m in self.model.priors}
        # rate control's quality tables, one per token rule (analyse's `tokens`); a decoder
        # measured only with the nearest codewords uses that table for both rules
        fid, near = self.model.fidelity, QUALITY_BY_DECODER["nearest"]
        self.quality = ({rule: tables.get(fid) or near.get(fid, {}) for rule, tables in QUALITY_BY_DECODER.items()}
                        if QUALITY_MODEL in ids else {})

    def for_model(self, file_id: bytes) -> "Codec":
        """The codec that decodes a file with this model id: self where the file uses the newest
        prior, else a twin sharing everything but the prior (an earlier one of these weights)."""
        prior = self.model.prior_for(file_id)
        if prior is self.model.prior:
            return self
        if file_id not in self._older:
            twin = copy.copy(self)
            twin.model = dataclasses.replace(self.model, prior=prior, model_id=file_id)
            twin._blank, twin._older = {}, {}
            self._older[file_id] = twin
        return self._older[file_id]

    def expected_quality(self, s: Setting, a: dict | None = None) -> float:
        """Expected decoded PSNR of a setting, for the analysis' token rule (default: rd)."""
        return expected_quality(s, self.quality.get((a or {}).get("tokens_rule", "rd")))

    # ------------------------------------------------------------------ analysis
    @torch.no_grad()
    def analyse(self, image: Image.Image, blocks: str = "rd", tokens: str = "rd", effort: str = "full") -> dict:
        """Everything about an image that does not depend on the rate setting. `blocks`: how
        the edge modes choose the blocks they keep ("rd" or "edge", see `block_scores`);
        `tokens`: which codeword each position codes ("rd": chosen for the decoder's pixels,
        `tokens_for`; "nearest": the nearest to the encoder's latent); `effort`: how hard rate
        control searches (ratecontrol.EFFORTS)."""
        if blocks not in BLOCK_CHOICES:
            raise ArgumentTypeError(f"blocks must be one of {', '.join(BLOCK_CHOICES)}, got {blocks!r}")
        if tokens not in TOKEN_CHOICES:
            raise ArgumentTypeError(f"tokens must be one of {', '.join(TOKEN_CHOICES)}, got {tokens!r}")
        errors.check_choice("effort", effort, EFFORTS)
        rgb = np.asarray(image.convert("RGB"))
        padded = pad_image(rgb)
        z = self._latent(padded)
        return {"size": image.size, "z": z, "strength": mask.edge_strength(padded), "tokens": {},
                "counts": {}, "rgb": rgb, "padded": padded, "blocks": blocks, "tokens_rule": tokens,
                "effort": effort}

    def _latent(self, padded: np.ndarray) -> torch.Tensor:
        """The tokenizer encoder's unit code vectors (1, D, h, w) of a padded uint8 image; grids
        over TILE_MAX_TOKENS in windows with ENCODER_MARGIN tokens of context (its receptive
        field is 7 tokens), so memory stays bounded at photo sizes."""
        def run(part: np.ndarray) -> torch.Tensor:
            x = torch.from_numpy(np.array(part)).permute(2, 0, 1)[None].float().div(255)
            return self.model.tokenizer.encode_latent(x.to(self.device))
        gh, gw = padded.shape[0] // 16, padded.shape[1] // 16
        if gh * gw <= TILE_MAX_TOKENS:
            return run(padded)
        z = None
        for (y0, y1, x0, x1), (a0, a1, b0, b1) in _windows(gh, gw, ENCODER_MARGIN):
            part = run(padded[16 * a0:16 * a1, 16 * b0:16 * b1])
            if z is None:
                z = part.new_empty(1, part.shape[1], gh, gw)
            z[..., y0:y1, x0:x1] = part[..., y0 - a0:y1 - a0, x0 - b0:x1 - b0]
        return z

    def tokens_for(self, a: dict, k: int) -> np.ndarray:
        """The token grid an encode of the analysed image codes at codebook K: the nearest
        codewords, or (analysis made with tokens="rd", grids up to REFINE_MAX_TOKENS) the
        codewords refined for the fidelity decoder's pixels (refine.py). Cached per K."""
        if k not in a["tokens"]:
            tok = self.model.tokenizer
            near = self._nearest(a, k)
            if a.get("tokens_rule") == "rd" and near.size <= REFINE_MAX_TOKENS:
                near = refine(tok.fidelity_decoder(self.model.fidelity), tok.codebook(k), near,
                              self._target(a), a["size"])
            a["tokens"][k] = near
        return a["tokens"][k]

    def _target(self, a: dict) -> torch.Tensor:
        """The padded image as the refinement's target: (1, 3, H, W) floats in [0, 1]."""
        return torch.from_numpy(np.array(a["padded"])).permute(2, 0, 1)[None].to(self.device).float().div(255)

    def _nearest(self, a: dict, k: int) -> np.ndarray:
        """The codewords nearest the encoder's latent at codebook K, cached in the analysis."""
        near = a.setdefault("nearest", {})
        if k not in near:
            near[k] = self.model.tokenizer.quantize(a["z"], k)[0].cpu().numpy().astype(np.int64)
        return near[k]

    def refines(self, a: dict, k: int) -> bool:
        """Whether `tokens_for(a, k)` has yet to run the refinement (an analysis of an image
        with rd tokens, codebook K not refined yet, a grid the refinement runs on)."""
        return (a.get("tokens_rule") == "rd" and k not in a["tokens"] and "z" in a
                and self._nearest(a, k).size <= REFINE_MAX_TOKENS)

    def rough_bytes(self, a: dict, s: Setting) -> float | None:
        """Estimated size of a setting with the nearest codewords, where that saves work: an
        analysis with rd tokens whose codebook has not been refined yet, a grid the refinement
        would run on, and a keep mask that needs no block ranking (the rd ranking refines too).
        None otherwise. Rate control uses it to rule out codebooks that cannot fit (at 0.005
        bpp the three largest) before refining them."""
        k = s.codebook
        if a.get("tokens_rule") != "rd" or k in a["tokens"] or "z" not in a:
            return None
        if s.mode in mask.USES_BLOCKS and round(s.quantile * a["strength"].size) > 0:
            return None
        near = self._nearest(a, k)
        return None if near.size > REFINE_MAX_TOKENS else self.estimate_bytes(a, s, near)

    def polish(self, a: dict, r: EncodeResult, cell: int) -> "tuple[EncodeResult, dict] | None":
        """The file of setting `r.setting` with its kept tokens refined for what the decoder
        draws from them (`refine`, POLISH_ROUNDS rounds of POLISH_STEPS steps): the error is
        measured on the fidelity decoder's pixels of the whole grid, dropped tokens generated
        from the kept ones as the decoder does (temperature 0), less what a correction grid of
        `cell` tokens restores (0: no grid), plus lambda x the kept tokens' exact bits in the
        stage tables of this file (first order: the contexts of later stages are taken as
        fixed). A round is kept only if, with its dropped tokens generated again, the measure
        falls. Returns the new exact encode and the analysis it belongs to (the polished tokens
        at this codebook), or None where the measure fell by less than POLISH_MIN_GAIN (an exact
        encode is not worth it) or the polish does not apply: settings that keep
        POLISH_MAX_KEPT of the tokens or more (little is generated; on Kodak such files gained
        0.01-0.03 dB for 2-3x the encode time), nearest tokens, grids over REFINE_MAX_TOKENS,
        analyses made from a file. Rate control (`_polished`) keeps the file only if it fits
        and measures better."""
        s = r.setting
        k = s.codebook
        tokens = self.tokens_for(a, k)
        if a.get("tokens_rule") != "rd" or tokens.size > REFINE_MAX_TOKENS or "padded" not in a:
            return None
        grid = tokens.shape
        _, keep = self._mask(a, s, grid)
        if keep.mean() >= POLISH_MAX_KEPT:  # little is generated: the codebook's refinement did the work
            return None
        bits = np.zeros((tokens.size, k), dtype=np.float32)  # exact bits of every codeword, kept positions

        def step(pos, counts):
            c = counts.double()
            bits[pos] = (-torch.log2(c / c.sum(1, keepdim=True))).numpy()
            return tokens.ravel()[pos]
        self._code_stages(grid, k, keep, step, a["counts"].setdefault(k, {}))  # tables cached by the encode
        tok = self.model.tokenizer
        decoder, codebook = tok.fidelity_decoder(self.model.fidelity), tok.codebook(k)
        target = self._target(a)
        kept = np.flatnonzero(keep.ravel())

        def rate(t: np.ndarray) -> float:
            return float(bits.ravel()[kept * k + t.ravel()[kept]].sum())

        def error(full: np.ndarray) -> float:
            return pixel_error(decoder, codebook, full, target, a["size"], cell)

        cur, full = tokens, self.generate(tokens, keep, k, 0, 0.0)
        err = error(full)
        lam = POLISH_LAMBDA * err / max(len(r.data), 1)  # the rate weight, from the starting error
        best = start = err + lam * rate(cur)
        for _ in range(POLISH_ROUNDS):
            new = refine(decoder, codebook, full, target, a["size"], POLISH_STEPS, keep, cell, bits, lam)
            cand = np.where(keep, new, cur)
            if (cand == cur).all():
                break
            full2 = self.generate(cand, keep, k, 0, 0.0)
            got = error(full2) + lam * rate(cand)
            if got >= best:
                break
            cur, full, best = cand, full2, got
        if cur is tokens or best > start * (1 - POLISH_MIN_GAIN):  # not worth an exact encode
            return None
        a2 = {**a, "tokens": {**a["tokens"], k: cur}, "exact": {}, "estimated": {}, "reconstructed": {}}
        return self.encode_setting(a2, s), a2

    # ------------------------------------------------------------------ coding passes
    def _stage_counts(self, ctx: np.ndarray, k: int, positions: np.ndarray) -> torch.Tensor:
        """Exact count tables at `positions`, in one array (`_stage_count_chunks` as one chunk)."""
        return next(self._stage_count_chunks(ctx, k, positions, max(1, len(positions))))

    def _stage_count_chunks(self, ctx: np.ndarray, k: int, positions: np.ndarray, rows: int | None = None):
        """Exact count tables at `positions`, as chunks of at most `rows` (default DECODE_ROWS)
        tables. Positions that no known token can reach get the blank table without a pass over
        the grid; the others come from one pass, then the output head and the count tables chunk
        by chunk (the same tables: each row depends only on its position's features). A
        decoder's memory then stays bounded on the large stages of a photo (a quarter of a 12-MP
        grid at K = 1024 would be 94 MB per table array, and range decoding makes several)."""
        prior, rows = self.model.prior, rows or DECODE_ROWS
        sees = self.sees_known(ctx != k, positions)
        feats = None
        if sees.any():
            where = torch.from_numpy(positions[sees]).to(prior.device)
            feats = prior.hidden(torch.from_numpy(ctx), k, where)
        rank = np.cumsum(sees) - 1  # row of each position in feats
        for a in range(0, len(positions), rows):
            b = min(a + rows, len(positions))
            counts = self.blank_counts(k).expand(b - a, -1)
            part = sees[a:b]
            if part.any():
                counts = counts.clone()
                f = feats[torch.from_numpy(rank[a:b][part]).to(prior.device)]
                counts[torch.from_numpy(part)] = counts_from_logits(prior.logits(f, k).cpu(), prior.exp.cpu())
            yield counts

    def blank_counts(self, k: int) -> torch.Tensor:
        """The count table (1, K) of a position whose receptive field holds only [MASK],
        computed on a 2x2 grid. Exact for every grid: with one input vector everywhere in the
        field, every layer gives one vector there (attention over equal values returns that
        value exactly; padding keys are excluded). So stage 0, and in large grids the next
        stages too, cost no pass of the prior over the whole grid."""
        if k not in self._blank:
            self._blank[k] = self.model.prior.counts(torch.full((2, 2), k, dtype=torch.int64), k,
                                                     torch.zeros(1, dtype=torch.int64))
        return self._blank[k]

    def sees_known(self, known: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """For each flat position, whether a known token lies in its receptive field: the box
        of inputs its output depends on, found by walking the windows of every block (shift
        (b % 2) * W/2) from the last block down to the first."""
        h, w = known.shape
        win, depth = self.model.prior.cfg.window, self.model.prior.cfg.depth
        lo_i, lo_j = positions // w, positions % w
        hi_i, hi_j = lo_i + 1, lo_j + 1
        for b in reversed(range(depth)):
            r = (b % 2) * (win // 2)
            lo_i, lo_j = (lo_i + r) // win * win - r, (lo_j + r) // win * win - r
            hi_i, hi_j = -(-(hi_i + r) // win) * win - r, -(-(hi_j + r) // win) * win - r
        lo_i, hi_i = np.clip(lo_i, 0, h), np.clip(hi_i, 0, h)
        lo_j, hi_j = np.clip(lo_j, 0, w), np.clip(hi_j, 0, w)
        table = np.zeros((h + 1, w + 1), dtype=np.int64)  # 2-D prefix sums of `known`
        table[1:, 1:] = known.cumsum(0).cumsum(1)
        return (table[hi_i, hi_j] - table[lo_i, hi_j] - table[hi_i, lo_j] + table[lo_i, lo_j]) > 0

    def _code_stages(self, grid, k, keep, step, cache=None, tables=None):
        """Run the stage loop shared by encoder, decoder and size estimate. `step(positions,
        tables)` returns the tokens at `positions`; `tables(ctx, k, positions)` (default: the
        exact count tables) gives one row per position. The encoder passes `cache`, keyed by
        stage and context, so rate-control trials only run the network where a setting changes
        a stage's context."""
        with self._passes(grid):
            return self._stage_loop(grid, k, keep, step, cache, tables or self._stage_counts)

    def _passes(self, grid):
        """A stage loop's passes over a large grid keep their freed blocks for the next pass
        (memory.py): the heap is trimmed once, when the loop ends."""
        return reuse_large_blocks(grid[0] * grid[1] >= LARGE_GRID_TOKENS and self.device.type == "cpu")

    def _stage_loop(self, grid, k, keep, step, cache, tables):
        h, w = grid
        ctx = np.full(h * w, k, dtype=np.int64)
        keep_flat = keep.ravel()
        coded = []
        for s, pos in enumerate(schedule.stage_positions(h, w)):
            kept = pos[keep_flat[pos]]
            if kept.size:
                if cache is None:  # decoder: tables for the kept positions only
                    counts = tables(ctx.reshape(h, w), k, kept)
                else:  # encoder: whole-stage tables, reusable by settings that keep other tokens
                    key = (s, hashlib.sha1(ctx.tobytes()).digest())
                    if key not in cache:
                        cache[key] = tables(ctx.reshape(h, w), k, pos)
                    counts = cache[key][torch.from_numpy(np.searchsorted(pos, kept))]
                toks = step(kept, counts)
                ctx[kept] = toks
                coded.append(toks)
        return ctx, coded

    def _mask(self, a: dict, setting: Setting, grid) -> tuple[np.ndarray | None, np.ndarray]:
        """Block map (edge modes) and keep mask of a setting."""
        if setting.mode not in mask.USES_BLOCKS:
            blocks = None
        elif round(setting.quantile * a["strength"].size) == 0:  # no block kept: no ranking needed
            blocks = np.zeros(a["strength"].shape, dtype=bool)
        else:
            blocks = mask.select_blocks(self.block_scores(a, setting.codebook, setting.mode), setting.quantile)
        return blocks, mask.keep_mask(setting.mode, grid, blocks)

    @torch.no_grad()
    def block_scores(self, a: dict, k: int, mode: str) -> np.ndarray:
        """Rank of the 32x32-pixel blocks an edge mode may keep beyond its base pattern (higher:
        kept first). "edge" (UIGC): edge strength. "rd" (rate-distortion, the default): what
        keeping the block saves in pixel error, measured on the decoder's own output: the
        squared error the fidelity decoder leaves in the block when the block's tokens are
        generated from the base pattern (temperature 0, as the decoder draws them), minus what
        it leaves with the true tokens. Every block costs the same number of kept tokens, so
        the saving ranks them. Cached per codebook and mode in the analysis. It costs a
        generation and a pixel decode per codebook and mode that rate control visits, so grids
        over RD_MAX_TOKENS tokens (about 4 MP) use edge strength: a 12-MP photo took minutes.
        Trim's analysis (built from a file, without "blocks") ranks by edge strength too."""
        if a.get("blocks") != "rd" or a["strength"].size * 4 > RD_MAX_TOKENS:
            return a["strength"]
        scores = a.setdefault("block_scores", {})
        if (k, mode) not in scores:
            tokens = self.tokens_for(a, k)
            h, w = tokens.shape
            base = mask.keep_mask(mode, (h, w), np.zeros((h // 2, w // 2), dtype=bool))
            drawn = self.generate(tokens, base, k, 0, 0.0, exact=False)
            if ("block_error", k) not in scores:
                scores[("block_error", k)] = self._block_error(a, tokens, k)
            scores[(k, mode)] = self._block_error(a, drawn, k) - scores[("block_error", k)]
        return scores[(k, mode)]

    def _block_error(self, a: dict, tokens: np.ndarray, k: int) -> np.ndarray:
        """Squared error of the fidelity decoder's pixels (rounded to 8 bits) against the padded
        original, summed over each 32x32 block -> (h/2, w/2)."""
        with pixels_bf16(self.device):  # the encoder's own decode (precision.py)
            x = self.model.tokenizer.decode(torch.from_numpy(tokens)[None].to(self.device), k, 0.0,
                                            fidelity=self.model.fidelity)[0]
        e = ((to_pixels(x).astype(np.float64) - a["padded"]) ** 2).sum(-1)
        h, w = tokens.shape
        return e.reshape(h // 2, 32, w // 2, 32).sum(axis=(1, 3))

    def encode_setting(self, a: dict, setting: Setting) -> EncodeResult:
        k = setting.codebook
        tokens = self.tokens_for(a, k)
        grid = tokens.shape
        blocks, keep = self._mask(a, setting, grid)
        enc = entropy.Encoder()
        mask_bits = mask.encode_blocks(enc, blocks) if blocks is not None else 0.0
        info = [0.0]
        flat = tokens.ravel()

        def step(pos, counts):
            sym = flat[pos]
            enc.encode(sym, counts)
            info[0] += entropy.information_bits(sym, counts)
            return sym

        def step_chunks(pos, chunks):  # the same symbols in the same order: the same words
            out, a = [], 0
            for counts in chunks:  # each chunk codes the next len(counts) positions
                out.append(step(pos[a:a + len(counts)], counts))
                a += len(counts)
            return np.concatenate(out)

        if tokens.size >= LARGE_GRID_TOKENS:
            # photo-size grids: a stage's tables chunk by chunk, as a decoder makes them, and
            # none kept (a 12-MP grid's at K = 1024 would hold 377 MB; rate control makes one
            # exact encode there, so nothing would reuse them)
            _, coded = self._code_stages(grid, k, keep, step_chunks, tables=self._stage_count_chunks)
        else:
            _, coded = self._code_stages(grid, k, keep, step, a["counts"].setdefault(k, {}))
        payload = enc.finish()
        w, h = a["size"]
        header = Header(w, h, self.model.model_id, k, setting.mode, token_crc(coded),
                        schedule_id=schedule.SCHEDULE_ID, coder_id=entropy.CODER_ID,
                        minor=container.WRITE_MINOR, mask_check=container.mask_check(keep),
                        decoder=self.model.fidelity)
        data = container.pack(Container(header, payload))
        return EncodeResult(data, setting, int(keep.size), int(keep.sum()), 8 * len(payload),
                            mask_bits, info[0])

    # ------------------------------------------------------------------ trimming
    def trim(self, data: bytes, nbytes: int, max_pixels: int = container.DEFAULT_MAX_PIXELS) -> EncodeResult:
        """Rewrite a .tkc file to at most `nbytes` bytes without the original image: keep a subset
        of its kept tokens that a mode and block map can express (drop the last UIGC stages, or
        edge blocks), or map them to a smaller codebook of the ladder (each codeword to its
        nearest smaller one), and re-code them (coder 2). Rate control picks, among those, the
        setting of highest expected quality that fits; edge blocks are ranked by the edges of
        the file's own decoded image (temperature 0, realism 0). A file that already fits is
        returned unchanged."""
        data = check_data(data)
        nbytes = errors.check_int("nbytes", nbytes, 1)
        c = self.read(data, errors.check_max_pixels(max_pixels))
        hd = c.header
        k0 = hd.codebook
        tokens, keep = self.decode_tokens(c)
        setting = Setting(k0, hd.mode, 0.0)
        if len(data) <= nbytes:
            return EncodeResult(data, setting, int(keep.size), int(keep.sum()), 8 * len(c.payload), 0.0, 0.0)
        full = (self.for_model(hd.model_id).generate(tokens, keep, k0, 0, 0.0, hd.coder_id)
                if not keep.all() else tokens)
        img = self.render(full, k0, (hd.width, hd.height), 0.0, 0, hd.decoder, fast=True)  # encoder side
        # dropped positions hold generated tokens: size estimates need a token everywhere, and
        # `allowed` below keeps them out of every file
        a = {"size": (hd.width, hd.height), "strength": mask.edge_strength(pad_image(np.asarray(img))),
             "tokens": {k0: full}, "counts": {}}
        tok = self.model.tokenizer
        with torch.no_grad():
            codes = tok.embed(torch.from_numpy(full)[None].to(self.device), k0)
            for k in self.model.codebooks:
                if k < k0:  # the ladder: each codeword to its nearest one in the smaller codebook
                    a["tokens"][k] = tok.quantize(codes, k)[0].cpu().numpy().astype(np.int64)
        # blocks whose extra tokens the file lacks rank last, so a block map is a subset while
        # its share allows; settings that would keep a missing token are not allowed
        grid = tokens.shape
        a["strength"] = np.where(self._block_keepable(keep), a["strength"], -1.0)

        def allowed(s: Setting) -> bool:
            return s.codebook <= k0 and not (self._mask(a, s, grid)[1] & ~keep).any()

        # the new file's tone and colour correction is fitted to this file's decoded image
        a["rgb"] = np.asarray(self.finish_pixels(img, read_correction(c)))
        # shown at the same size as the file it comes from
        return self.encode_shown(a, nbytes, container.shown_size(hd), allowed=allowed)

    @staticmethod
    def _block_keepable(keep: np.ndarray) -> np.ndarray:
        """(h/2, w/2): blocks all four of whose tokens the file keeps."""
        h, w = keep.shape
        return keep.reshape(h // 2, 2, w // 2, 2).all(axis=(1, 3))

    # ------------------------------------------------------------------ decoding
    def read(self, data: bytes, max_pixels: int = container.DEFAULT_MAX_PIXELS) -> Container:
        c = container.unpack(data, max_pixels)
        hd = c.header
        if not self.model.accepts(hd.model_id):
            raise CodecError(f"file was made with model {hd.model_id.hex()}, but the loaded weights "
                             f"are model {self.model.model_id.hex()}; decode with matching weights "
                             "(--weights or TOKC_WEIGHTS)")
        check_ids(hd)
        if hd.codebook not in self.model.codebooks:
            raise CodecError(f"file uses codebook K={hd.codebook}, which the loaded model lacks")
        if hd.decoder not in self.model.tokenizer.fidelity_decoders:
            raise CodecError(f"file was encoded for fidelity decoder {hd.decoder}, which the loaded "
                             f"weights lack (they hold {self.model.tokenizer.fidelity_decoders}); "
                             "install newer weights (--weights or TOKC_WEIGHTS)")
        return c

    def decode_tokens(self, c: Container) -> tuple[np.ndarray, np.ndarray]:
        hd = c.header
        coder = self.for_model(hd.model_id)
        if coder is not self:  # coded with an earlier prior
            return coder.decode_tokens(c)
        grid = hd.grid
        k = hd.codebook
        floor = container.token_floor_bits(k)
        try:
            dec, keep = read_mask(c)
            left = [int(keep.sum())]  # kept tokens not yet decoded

            def tables(ctx, k_, positions):  # before each pass: is there room for what is left?
                dec.require(left[0] * floor, f"its last {left[0]} kept tokens")
                return self._stage_count_chunks(ctx, k_, positions)

            def step(pos, chunks):
                out = []
                for counts in chunks:
                    left[0] -= len(counts)
                    # the chunk's tokens cost at least their most likely symbols: is there room?
                    out.append(dec.decode(counts, left[0] * floor,
                                          f"the {len(counts) + left[0]} kept tokens from here on"))
                return np.concatenate(out)

            ctx, coded = self._code_stages(grid, k, keep, step, tables=tables)
            dec.finish()  # the payload must end where the coder's words end
        except entropy.DecodeError as e:
            raise CodecError(f"file is damaged: {e}") from None
        if any((t < 0).any() or (t >= k).any() for t in coded) or token_crc(coded) != hd.token_crc32:
            raise CodecError("decoded tokens fail their CRC-32: the file is damaged, or the prior "
                             "computed different tables than the encoder's (report this as a bug)")
        return ctx.reshape(grid), keep

    def generate(self, tokens: np.ndarray, keep: np.ndarray, k: int, seed: int,
                 temperature: float, coder_id: int = entropy.CODER_ID, exact: bool = True) -> np.ndarray:
        """Fill dropped tokens stage by stage from the prior, kept tokens fixed. Context for a
        stage: every token of earlier stages (kept or already generated), [MASK] elsewhere.
        Sampled tokens (temperature > 0) use the random numbers of the file's coder id (rng.py).
        `exact=False` (temperature 0 only): the float twin's most likely tokens, what the
        encoder uses to preview a decode (three times faster; on Kodak 0-3% of the generated
        tokens differ from the exact prior's, near-ties, and the decoded PSNR by at most
        0.03 dB, docs/performance.md session 13). Decoders always use the exact prior."""
        with self._passes(tokens.shape):
            return self._generate(tokens, keep, k, seed, temperature, coder_id, exact)

    def _generate(self, tokens, keep, k, seed, temperature, coder_id, exact) -> np.ndarray:
        h, w = tokens.shape
        legacy = LegacyGenerator(seed) if coder_id == 1 else None
        t_milli = int(round(temperature * 1000))
        out = tokens.ravel().copy()
        ids = schedule.stage_ids(h, w).ravel()
        keep_flat = keep.ravel()
        prior = self.model.prior
        for s, pos in enumerate(schedule.stage_positions(h, w)):
            drop = pos[~keep_flat[pos]]
            if not drop.size:
                continue
            ctx = np.where(ids < s, out, k).reshape(h, w)
            if not exact and t_milli <= 0:
                out[drop] = self.twin_logits(ctx, k, drop).argmax(-1).cpu().numpy()
                continue
            logits = prior.logits_at(torch.from_numpy(ctx), k, torch.from_numpy(drop))
            if t_milli <= 0:
                out[drop] = logits.argmax(-1).numpy()
            else:
                counts = counts_from_logits(logits, prior.exp.cpu(), t_milli)
                out[drop] = legacy.sample(counts) if legacy else sample_at(counts, drop, seed)
        return out.reshape(h, w)

    @torch.no_grad()
    def twin_logits(self, ctx: np.ndarray, k: int, positions: np.ndarray, bf16: bool = False) -> torch.Tensor:
        """The float twin's logits (N, K) at the flat `positions` of a context grid (h, w)
        (size estimates and encoder previews; never used to code). `bf16`: under bfloat16
        autocast (the fast effort's size estimates: 1.5-1.7x faster passes)."""
        where = np.zeros(ctx.size, dtype=bool)
        where[positions] = True
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            return self.model.prior.float_twin()(torch.from_numpy(ctx)[None].to(self.device), k,
                                                 torch.from_numpy(where.reshape(ctx.shape))[None].to(self.device))

    @torch.no_grad()
    def render(self, tokens: np.ndarray, k: int, size: tuple[int, int], realism: float = 0.0,
               seed: int = 0, fidelity: int = 0, fast: bool = False) -> Image.Image:
        """Pixels from a full token grid. `fidelity` is the number of the fidelity decoder (the
        file's header field `decoder`). With a realism-conditioned decoder, `realism` in [0, 1]
        picks the point between fidelity (0) and realism (1): the fidelity decoder's picture
        below a cut-off frequency, the realism decoder's detail above it (detail.py). Its noise
        is drawn on the CPU from `seed`, so the same file, seed and realism give the same pixels
        on a machine. `fast`: in bfloat16 where the device computes it natively (precision.py;
        never for a conformant decode at realism 0)."""
        with pixels_bf16(self.device, fast):
            return self._render(tokens, k, size, realism, seed, fidelity)

    def _render(self, tokens: np.ndarray, k: int, size: tuple[int, int], realism: float,
                seed: int, fidelity: int) -> Image.Image:
        t = torch.from_numpy(tokens)[None].to(self.device)
        tok = self.model.tokenizer
        w, h = size
        banded = realism > 0 and tok.decoder.conditioned
        rd, sigma = detail.knob(realism) if banded else (0.0, 0.0)
        gh, gw = tokens.shape
        if gh * gw <= TILE_MAX_TOKENS:
            x = tok.decode(t, k, 0.0, fidelity=fidelity)
            if banded:
                x = detail.band_split(x, tok.decode(t, k, rd, torch.Generator().manual_seed(seed)), sigma)
            return Image.fromarray(to_pixels(x[0])[:h, :w])
        # large grids: windows of at most TILE tokens a side plus TILE_MARGIN tokens of context
        # on every inner side, which covers the decoder's receptive field (and the band's blur):
        # the same pixels as one pass, in bounded memory. The noise is drawn for the whole image.
        trim()  # what earlier steps freed goes back first: a window's activations set the peak
        maps = tok.decoder.noise_maps(gh, gw, torch.Generator().manual_seed(seed)) if banded else None
        out = np.empty((gh * 16, gw * 16, 3), dtype=np.uint8)
        for (y0, y1, x0, x1), (a0, a1, b0, b1) in _windows(gh, gw, TILE_MARGIN):
            win = t[:, a0:a1, b0:b1]
            x = tok.decode(win, k, 0.0, fidelity=fidelity)
            if banded:
                x = detail.band_split(x, tok.decode(win, k, rd, tile=(maps, (a0, b0, gh))), sigma)
            out[16 * y0:16 * y1, 16 * x0:16 * x1] = to_pixels(x[0])[16 * (y0 - a0):16 * (y1 - a0),
                                                                    16 * (x0 - b0):16 * (x1 - b0)]
            del x
            trim()
        return Image.fromarray(out[:h, :w])

    def decode(self, data: bytes, seed: int = 0, temperature: float = 0.0,
               max_pixels: int = container.DEFAULT_MAX_PIXELS, realism: float | None = None) -> Image.Image:
        """Arguments are checked before any work: seed an integer 0..2**64-1, temperature a
        number 0..5, realism None (the model's default) or 0..1, max_pixels a positive integer."""
        data = check_data(data)
        seed, temperature = errors.check_seed(seed), errors.check_temperature(temperature)
        max_pixels = errors.check_max_pixels(max_pixels)
        r = None if realism is None else check_realism(realism)
        c = self.read(data, max_pixels)
        hd = c.header
        if r is None:  # a reduced file's default is scaled with it: its texture, drawn on a
            # nearest-resampled token grid, shows the grid's blocks at full strength (docs/scale.md)
            r = self.default_realism * resample.coded_fraction(hd)
        corr = read_correction(c)  # before the tokens: its grid must fit the declared size
        tokens, keep = self.decode_tokens(c)
        full = (self.for_model(hd.model_id).generate(tokens, keep, hd.codebook, seed, temperature, hd.coder_id)
                if not keep.all() else tokens)
        shown = resample.display_size(hd)
        textured = shown is not None and r > 0 and self.model.tokenizer.decoder.conditioned
        fast = r > 0 and self.model.tokenizer.decoder.conditioned  # no tolerance at r > 0 (spec 8.6)
        img = self.render(full, hd.codebook, (hd.width, hd.height), 0.0 if textured else r, seed, hd.decoder,
                          fast)
        out = resample.show(self.finish_pixels(img, corr), c)
        if not textured:
            return out
        # a reduced file's realism detail is drawn at the size it is shown at (spec 12.2): drawn
        # at the coded size, the upsampling would magnify the grain into coarse mottling
        up = resample.tokens_at(full, (hd.width, hd.height), shown)
        # one int16 buffer, in place (a 12-MP photo: 71 MB, where three of them were made)
        band = np.asarray(self.render(up, hd.codebook, shown, r, seed, hd.decoder, fast), dtype=np.int16)
        band -= np.asarray(self.render(up, hd.codebook, shown, 0.0, seed, hd.decoder, fast))
        band += np.asarray(out)
        return Image.fromarray(np.clip(band, 0, 255, out=band).astype(np.uint8))

    @staticmethod
    def finish_pixels(img: Image.Image, corr: "correction.Correction | None") -> Image.Image:
        """Apply a file's tone and colour correction (extension 2, from read_correction), if any."""
        return img if corr is None else Image.fromarray(correction.apply(np.asarray(img), corr))

    @property
    def default_realism(self) -> float:
        return DEFAULT_REALISM if self.model.realism else 0.0


check_realism = errors.check_realism


def check_weights_arg(weights) -> None:
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise ArgumentTypeError(f"weights must be a path (str or os.PathLike) or None, got {weights!r}")


def check_data(data) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ArgumentTypeError(f"data must be the bytes of a .tkc file, got {type(data).__name__}")
    return bytes(data)


# What describe() cannot check without the model; everything else decode() checks, it checks.
NOT_CHECKED = ("the model id against installed weights", "that the model has the codebook",
               "the kept tokens (range decoding them needs the prior) and their CRC-32")


def public(fn):
    """Mark a public API function: whatever goes wrong inside raises a TokcError (weights and
    image errors as WeightsError and ImageError; a call that does not fit the signature, such
    as a misspelt keyword, as ArgumentTypeError, which is a TypeError; anything unexpected as
    CodecError, with the original exception chained). MemoryError and KeyboardInterrupt pass
    through."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            signature.bind(*args, **kwargs)
        except TypeError as e:  # the caller's mistake, not tokc's: say so, without "report this"
            raise ArgumentTypeError(f"{fn.__name__}(): {e}") from None
        try:
            return fn(*args, **kwargs)
        except TokcError:
            raise
        except _WeightsError as e:
            raise WeightsError(str(e)) from None
        except _ImageError as e:
            raise ImageError(str(e)) from None
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - the API promises TokcError only
            raise CodecError(f"unexpected {type(e).__name__}: {e} (please report this)") from e
    return wrapper


@public
def describe(data: bytes, max_pixels: int = container.DEFAULT_MAX_PIXELS) -> dict:
    """Facts about a .tkc file that need no model (for `tokc info`). It checks what decode
    checks without the model (container, ids, payload length, block map, payload room for the
    kept tokens) and raises as decode would; `not_checked` lists the rest."""
    c = container.unpack(check_data(data), errors.check_max_pixels(max_pixels))
    hd = c.header
    gh, gw = hd.grid
    try:
        _, keep = read_mask(c)
    except entropy.DecodeError as e:
        raise FormatError(f"file is damaged: {e}") from None
    corr = read_correction(c)
    ext_bytes = sum(len(b) for t, b in hd.extensions if t == correction.TAG)
    w, h = container.shown_size(hd)
    return {
        "format_version": f"{container.MAJOR}.{hd.minor}",
        "width": w, "height": h, "bytes": len(data),
        "bpp": 8 * len(data) / (w * h),
        "coded_size": None if (w, h) == (hd.width, hd.height) else [hd.width, hd.height],
        "codebook": hd.codebook, "mode": hd.mode,
        "grid": [gh, gw], "tokens_total": gh * gw, "tokens_kept": int(keep.sum()),
        # in both edge modes a block's (odd row, even column) token is kept only in edge blocks
        "edge_blocks": int(keep[1::2, ::2].sum()) if hd.mode in mask.USES_BLOCKS else None,
        "payload_bytes": len(c.payload),
        "token_bits": 8 * len(c.payload),
        "overhead_bytes": len(data) - len(c.payload),
        "model_id": hd.model_id.hex(), "schedule_id": hd.schedule_id, "coder_id": hd.coder_id,
        "decoder": hd.decoder,
        "token_crc32": f"{hd.token_crc32:08x}",
        "correction": (None if corr is None else
                       ("grey" if corr.grey else "colour") + (f", {16 * corr.cell}-px cells" if corr.cell else "")
                       + f", {ext_bytes} bytes"),
        "not_checked": "; ".join(NOT_CHECKED),
    }


_DEFAULT: dict[tuple, Codec] = {}


def get_codec(weights: str | os.PathLike | None = None, device: str = "auto") -> Codec:
    """A Codec per weights file and device, kept for reuse (the weights are found again on each
    call, so a changed TOKC_WEIGHTS takes effect)."""
    _device(device)  # refuse a bad name before looking for weights
    check_weights_arg(weights)
    try:
        key = (str(find_weights(weights)), device)
    except _WeightsError as e:
        raise WeightsError(str(e)) from None
    if key not in _DEFAULT:
        _DEFAULT[key] = Codec(key[0], device)
    return _DEFAULT[key]


@public
def encode(image, bpp: float | None = 0.03, *, nbytes: int | None = None, codebook: int | None = None,
           mode: str | None = None, quantile: float | None = None, weights: str | None = None,
           device: str = "auto", max_pixels: int = container.DEFAULT_MAX_PIXELS,
           correction: bool = True, blocks: str = "rd", tokens: str = "rd", scale: float | None = None,
           effort: str = "full") -> bytes:
    """Encode a PIL image, an image path or image bytes to .tkc bytes at or under `bpp` bits
    per pixel (or `nbytes` bytes, which wins over `bpp`; both None: the richest setting the
    other options allow). Images over `max_pixels` pixels are refused. `correction=False`
    leaves out the tone and colour correction (smaller gain, faster encode). `blocks`: how the
    edge mask modes choose their blocks, "rd" (pixel error saved, default) or "edge" (edge
    strength, UIGC's rule). `tokens`: which codeword each position codes, "rd" (chosen for the
    decoder's pixels, default) or "nearest" (nearest to the tokenizer's latent). `scale`: code
    a smaller copy of the image (a fraction of width and height in (0, 1]) that the decoder
    shows at full size; None (default) lets rate control choose among several. `effort`:
    "full" (default) or "fast" (no scale search, one correction option, no polish: 2-4x faster
    below 0.015 bpp, 10-20% above, for 0.01-0.08 dB of PSNR)."""
    from .imageio import load_image
    max_pixels = errors.check_max_pixels(max_pixels)
    if isinstance(image, Image.Image):
        w, h = image.size
        if w * h > max_pixels:
            raise ImageError(f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}")
    elif isinstance(image, (str, os.PathLike, bytes, bytearray)):
        image = load_image(bytes(image) if isinstance(image, bytearray) else image, max_pixels)
    else:
        raise ArgumentTypeError(f"image must be a PIL image, a path or image bytes, got {type(image).__name__}")
    if not isinstance(correction, bool):
        raise ArgumentTypeError(f"correction must be True or False, got {correction!r}")
    return get_codec(weights, device).encode(image, bpp, nbytes, codebook, mode, quantile, correction,
                                             blocks, tokens, scale, effort).data


@public
def decode(data: bytes, seed: int = 0, *, temperature: float = 0.0, realism: float | None = None,
           weights: str | None = None, device: str = "auto",
           max_pixels: int = container.DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode .tkc bytes to a PIL image. `seed` (0..2**64-1) and `temperature` (0..5) steer
    regenerated tokens; `realism` in [0, 1] steers the pixel decoder from fidelity (0) to
    realistic texture (1), default DEFAULT_REALISM; files over `max_pixels` are refused."""
    data = check_data(data)
    errors.check_seed(seed)  # arguments and the container are checked before the model loads
    errors.check_temperature(temperature)
    container.unpack(data, errors.check_max_pixels(max_pixels))
    if realism is not None:
        check_realism(realism)
    return get_codec(weights, device).decode(data, seed, temperature, max_pixels, realism)


__all__ = ["Codec", "CodecError", "FormatError", "ImageError", "TokcError", "WeightsError", "Setting",
           "encode", "decode", "describe"]
