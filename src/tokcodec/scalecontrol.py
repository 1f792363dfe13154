"""Rate control over the coded scale: which size of the photo to code (resample.py).

For each candidate scale the token and correction rate control (ratecontrol.py) makes a file at
the budget (less extension 3's bytes); the file is decoded as a decoder shows it (temperature
0, realism 0, corrected, upsampled to the photo's size) and scored at the photo's size by PSNR
less SCALE_COLOUR_WEIGHT x colour error (ratecontrol.measured_quality).

The search's files keep every token (mode entire: the ladder's fine steps do what the mask modes
do at one scale) and use the nearest codewords: cheap. The scales are searched as a hill climb
on the ladder resample.SCALES, starting from the scale predicted by the target (coded at about
PREDICTED_BPP bits per coded pixel, where the largest token settings of a smaller copy lie): one
step up, then on in whichever direction is better while it stays better. The best scale, and
the runner-up where it is within TIE_MARGIN, are then made with the whole rate control (every
mode, the photo's token rule) and measured again; the better one is polished. Targets from
SEARCH_MAX_BPP up code the photo at its own size where it fits, and photos whose predicted grid is over
TRIAL_MAX_TOKENS make one file at the predicted scale.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from . import container, resample
from .metrics import region_lab
from .ratecontrol import TRIAL_MAX_TOKENS, EncodeResult, TargetError, measured_quality

PREDICTED_BPP = 0.025
# From this target up the photo is coded at its own size: on Kodak at 0.02 bpp the full-size file
# measured best or within 0.1 dB (docs/scale.md), and the search there costs 2-3x the encode
SEARCH_MAX_BPP = 0.015
# The search's colour weight, lower than the correction grid's (ratecontrol.COLOUR_WEIGHT, 0.2
# since session 12): with 0.2 here too, 0.005 bpp files moved to larger copies with 16- or
# 64-word codebooks (Kodak kodim08, 13, 18: SSIMULACRA2 -140 -> -173, -143 -> -154, -94 ->
# -111; 0.005 bpp means MS-SSIM 0.661 -> 0.658, SSIMULACRA2 -82.6 -> -85.7; docs/colour.md 9)
SCALE_COLOUR_WEIGHT = 0.1
TIE_MARGIN = 0.25  # dB of the search's measure within which a runner-up is tried with rd codewords


def predicted_scale(bpp: float) -> float:
    """The ladder's scale nearest the one at which the target is PREDICTED_BPP per coded pixel."""
    s = float(np.sqrt(bpp / PREDICTED_BPP))
    return min(resample.SCALES, key=lambda x: abs(x - s))


class ScaleControl:
    """Scale search of `codec.Codec` (which provides analyse, encode_analysed and decode)."""

    def encode_shown(self, a: dict, budget: int | None, shown: tuple[int, int], codebook: int | None = None,
                     mode: str | None = None, quantile: float | None = None, allowed=None,
                     correct: bool = True, polish: bool = True) -> EncodeResult:
        """`encode_analysed` of an analysis of a copy of the photo, in a file shown at `shown`
        (extension 3; none where the copy is that size). The tokens get the budget less the
        extension's bytes; where the whole file still overflows (the extension can lengthen
        header_len's varint by a byte), they get that much less again, twice at most. A
        TargetError's smallest file is shown at `shown` too."""
        cs = tuple(a["size"])
        if cs == tuple(shown):
            return self.encode_analysed(a, budget, codebook, mode, quantile, allowed, correct, polish)

        def scaled(r: EncodeResult) -> EncodeResult:
            return dataclasses.replace(r, data=resample.with_display(r.data, shown), coded_size=cs)
        inner = None if budget is None else budget - resample.extension_bytes(shown)
        for _ in range(2):
            try:
                r = scaled(self.encode_analysed(a, None if inner is None else max(inner, 1), codebook, mode,
                                                quantile, allowed, correct, polish, shown))
            except TargetError as e:
                e.smallest = scaled(e.smallest)
                raise
            if budget is None or len(r.data) <= budget:
                return r
            inner -= len(r.data) - budget
        raise TargetError(f"target {budget} bytes cannot be reached for this image coded at {cs[0]}x{cs[1]}; "
                          f"the smallest file found gives {len(r.data)} bytes", r)

    def prepare(self, image: Image.Image, blocks: str = "rd", tokens: str = "rd") -> dict:
        """What every encode of a photo shares: the photo, and each coded scale's analyses
        (made when first needed)."""
        rgb = np.asarray(image.convert("RGB"))
        return {"image": image, "rgb": rgb, "size": image.size, "blocks": blocks, "tokens": tokens,
                "analyses": {}, "lab": None}

    def analysis_at(self, p: dict, size: tuple[int, int], rule: str | None = None) -> dict:
        """The analysis of the photo's copy at `size` for token rule `rule` (default: the
        photo's). The rd analysis starts from the nearest one's latent, edges, nearest
        codewords and exact stage tables (these do not depend on which tokens are coded)."""
        rule = rule or p["tokens"]
        key = (size, rule)
        if key not in p["analyses"]:
            near = p["analyses"].get((size, "nearest"))
            if rule == "rd" and near is not None:
                shared = ("size", "z", "strength", "rgb", "padded", "blocks", "nearest", "counts")
                p["analyses"][key] = {**{f: near[f] for f in shared if f in near}, "tokens": {}, "tokens_rule": "rd"}
            else:
                p["analyses"][key] = self.analyse(resample.downscale(p["image"], size), p["blocks"], rule)
        return p["analyses"][key]

    def encode_prepared(self, p: dict, budget: int | None, codebook: int | None = None,
                        mode: str | None = None, quantile: float | None = None, correct: bool = True,
                        scale: float | None = None) -> EncodeResult:
        """The best file at or under `budget` bytes over coded scales (`scale`: None searches,
        a number codes at that scale only; no budget: full size)."""
        size = p["size"]
        w, h = size

        def make(s: float, rule: str | None = None, polish: bool = True, quick: bool = False) -> EncodeResult:
            """The file at scale s with token rule `rule` (default: the photo's); `quick`: mode
            entire only, unless the caller chose the mode (the search's files)."""
            a = self.analysis_at(p, resample.coded_size(size, s), rule)
            m = "entire" if quick and mode is None else mode
            return self.encode_shown(a, budget, size, codebook, m, quantile, correct=correct, polish=polish)

        if budget is None or scale is not None:
            return make(1.0 if scale is None else scale)
        if 8 * budget / (w * h) >= SEARCH_MAX_BPP:
            try:
                return make(1.0)
            except TargetError:  # below the photo's smallest file: a smaller copy may fit
                pass
        ladder = sorted({resample.coded_size(size, s): s for s in resample.SCALES}.items())
        sizes = [cs for cs, _ in ladder]
        start = sizes.index(resample.coded_size(size, predicted_scale(8 * budget / (w * h))))
        if np.prod(container.grid_size(*sizes[start])) > TRIAL_MAX_TOKENS:  # large photo: one file
            return make(ladder[start][1])
        if p["lab"] is None:
            p["lab"] = region_lab(p["rgb"])
        errors: list[TargetError] = []

        def measure(r: EncodeResult) -> float:
            return measured_quality(p["rgb"], p["lab"], np.asarray(self.decode(r.data, 0, 0.0, realism=0.0)),
                                    SCALE_COLOUR_WEIGHT)

        def attempt(i: int, rule: str | None, polish: bool, quick: bool = False) -> tuple[float, EncodeResult] | None:
            try:
                r = make(ladder[i][1], rule, polish, quick)
            except TargetError as e:
                errors.append(e)
                return None
            return measure(r), r

        scores: dict[int, tuple[float, EncodeResult] | None] = {}

        def score(i: int) -> float:  # the search's files: nearest codewords, every token kept, no polish
            if i not in scores:
                scores[i] = attempt(i, "nearest", False, quick=True)
            return -np.inf if scores[i] is None else scores[i][0]

        best = start
        while score(best) == -np.inf and best > 0:  # nothing fits: smaller copies make smaller files
            best -= 1
        for step in (1, -1):  # up first; down only if up did not help
            moved = False
            i = best + step
            while 0 <= i < len(ladder) and score(i) > score(best):
                best, moved, i = i, True, i + step
            if moved:
                break
        if scores[best] is None:
            # nothing fits at any scale tried: offer the smallest file of the smallest scale tried
            raise min(errors, key=lambda e: len(e.smallest.data))
        p["trials"] = {ladder[i][0]: f[0] for i, f in scores.items() if f is not None}
        if p["tokens"] == "nearest":
            return make(ladder[best][1])
        # rd codewords gain more where the codebook is small (the larger scales), so the runner-up
        # within TIE_MARGIN of the best is made with them too; the better one is then polished
        near = [i for i in scores if i != best and scores[i] is not None and score(best) - score(i) < TIE_MARGIN]
        finals = {i: attempt(i, None, False) for i in [best] + sorted(near, key=score)[-1:]}
        finals = {i: f for i, f in finals.items() if f is not None}
        if not finals:  # rd codewords can cost a few bytes more than the nearest
            return scores[best][1]
        win = max(finals, key=lambda i: finals[i][0])
        return make(ladder[win][1])  # the rate control again, on cached encodes, with the polish
