"""Bjontegaard delta rate between two benchmark runs (docs/benchmarks.json rows): the mean change
in bits at equal quality, from each run's curve of mean bpp against mean PSNR (or MS-SSIM) over
the images both runs have, cubic fits of log-rate against quality, integrated over the overlap
of the quality ranges. Negative: the second run needs fewer bits.

    python scripts/bd_rate.py OLD.json NEW.json [--codec "tokc r=0"] [--b-codec "VVC best"]
"""
import json
import sys

import numpy as np


def curve(rows, codec, keys, metric):
    pts = []
    for t in sorted({k[1] for k in keys}):
        ks = [k for k in keys if k[1] == t]
        pts.append((np.mean([rows[k]["bpp"] for k in ks]), np.mean([rows[k][metric] for k in ks])))
    return np.array(pts)


def bd_rate(a, b):
    """a, b: (n, 2) arrays of (rate, quality). Mean relative rate change of b against a."""
    fa = np.polyfit(a[:, 1], np.log(a[:, 0]), 3)
    fb = np.polyfit(b[:, 1], np.log(b[:, 0]), 3)
    lo, hi = max(a[:, 1].min(), b[:, 1].min()), min(a[:, 1].max(), b[:, 1].max())
    ia, ib = np.polyint(fa), np.polyint(fb)
    diff = ((np.polyval(ib, hi) - np.polyval(ib, lo)) - (np.polyval(ia, hi) - np.polyval(ia, lo))) / (hi - lo)
    return float(np.exp(diff) - 1)


def main(argv):
    opt = {"--codec": "tokc r=0", "--b-codec": None}
    for name in opt:
        if name in argv:
            opt[name] = argv[argv.index(name) + 1]
    files = [x for i, x in enumerate(argv) if not x.startswith("--") and (i == 0 or argv[i - 1] not in opt)]
    old, new = (json.load(open(f)) for f in files[:2])
    ca, cb = opt["--codec"], opt["--b-codec"] or opt["--codec"]
    ra = {(r["image"], r["target"]): r for r in old if r["codec"] == ca}
    rb = {(r["image"], r["target"]): r for r in new if r["codec"] == cb}
    keys = sorted(set(ra) & set(rb))
    for metric in ("psnr", "ms_ssim"):
        a, b = curve(ra, ca, keys, metric), curve(rb, cb, keys, metric)
        print(f"{metric}: {ca} ({files[0]}) -> {cb} ({files[1]}), {len(keys)} image-rate pairs: "
              f"BD-rate {100 * bd_rate(a, b):+.1f}%")


if __name__ == "__main__":
    main(sys.argv[1:])
