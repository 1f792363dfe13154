"""Compare priors on real files: information (bits) per kept token of the same tokens and masks under
each prior's exact tables (the coder adds 0.15-0.35%), and the time of one exact pass.

    python scripts/prior_compare.py WEIGHTS_DIR [WEIGHTS_DIR ...] [--data ../shared/data/kodak]
        [--images kodim01,kodim05] [--json out.json]

The first folder's codec analyses each image once (its tokenizer chooses the tokens; every
folder must hold the same tokenizer); each folder's prior then codes the same settings: every
codebook in mode `entire`, and the settings rate control uses most at 0.005-0.03 bpp (K=16
and 64 with half or a quarter of the blocks kept, K=256 and 1024 checkerboard). Each prior's
tables are exact, so the file size is what a file made with that prior would be."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tokcodec.codec import Codec
from tokcodec.imageio import load_image
from tokcodec.ratecontrol import Setting

SETTINGS = [Setting(k, "entire") for k in (1024, 256, 64, 16)] + [
    Setting(16, "edge_more", 0.25), Setting(64, "edge", 0.5), Setting(256, "checkerboard"),
    Setting(1024, "checkerboard")]


def pass_ms(codec: Codec, grid=(32, 48), runs: int = 7) -> float:
    toks = torch.randint(0, 1024, grid, generator=torch.Generator().manual_seed(0))
    prior = codec.model.prior
    prior.hidden(toks, 1024)
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        prior.hidden(toks, 1024)
        ts.append(time.perf_counter() - t)
    return 1000 * statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("weights", nargs="+")
    ap.add_argument("--data", default="../shared/data/kodak")
    ap.add_argument("--images", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    codecs = [Codec(w, "cpu") for w in args.weights]
    files = sorted(Path(args.data).glob("*.png"))
    if args.images:
        files = [f for f in files if f.stem in args.images.split(",")]
    bits = {w: {str(s): [] for s in SETTINGS} for w in args.weights}
    for f in files:
        a = codecs[0].analyse(load_image(f))
        for w, c in zip(args.weights, codecs):
            for s in SETTINGS:
                a["counts"].clear()
                r = c.encode_setting(a, s)
                bits[w][str(s)].append(r.info_bits / r.tokens_kept)
            a["counts"].clear()
        print(f.stem, " ".join(f"{np.mean([bits[w][str(s)][-1] for s in SETTINGS]):.3f}" for w in args.weights),
              flush=True)
    out = {w: {"bits_per_kept_token": {s: float(np.mean(v)) for s, v in bits[w].items()},
               "pass_ms_32x48": pass_ms(c)} for w, c in zip(args.weights, codecs)}
    base = args.weights[0]
    for w in args.weights:
        rel = [out[w]["bits_per_kept_token"][s] / out[base]["bits_per_kept_token"][s] - 1 for s in out[w]["bits_per_kept_token"]]
        print(f"{w}: pass {out[w]['pass_ms_32x48']:.1f} ms; " + ", ".join(
            f"{s.split('(')[1].rstrip(')')}: {v:.3f}" for s, v in out[w]["bits_per_kept_token"].items())
            + f"; mean change {100 * np.mean(rel):+.2f}%", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())
