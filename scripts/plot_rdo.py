"""Rate-distortion curves of two benchmark runs (docs/benchmarks.json rows) and VVC: mean bpp
against mean PSNR, MS-SSIM and SSIMULACRA2 over the images both runs have, tokc at realism 0.

    python scripts/plot_rdo.py OLD.json NEW.json OUT_PREFIX [--labels "nearest tokens,rd tokens"]
writes OUT_PREFIX-psnr.png, OUT_PREFIX-msssim.png and OUT_PREFIX-ssimulacra2.png.
"""
import json
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tokcodec.bench import finish_plot  # noqa: E402


def points(rows, codec, keys, metric):
    out = []
    for t in sorted({k[1] for k in keys}):
        ks = [k for k in keys if k[1] == t and k in rows]
        out.append((np.mean([rows[k]["bpp"] for k in ks]), np.mean([rows[k][metric] for k in ks])))
    return np.array(out)


def main(argv):
    labels = ["before", "after"]
    if "--labels" in argv:
        labels = argv[argv.index("--labels") + 1].split(",")
        argv = argv[:argv.index("--labels")] + argv[argv.index("--labels") + 2:]
    old, new = (json.load(open(f)) for f in argv[:2])
    prefix = argv[2]
    idx = [{(r["image"], r["target"]): r for r in d if r["codec"] == c}
           for d, c in ((old, "tokc r=0"), (new, "tokc r=0"), (new, "VVC best"))]
    keys = sorted(set(idx[0]) & set(idx[1]) & set(idx[2]))
    for metric, name in (("psnr", "PSNR (dB)"), ("ms_ssim", "MS-SSIM"), ("ssimulacra2", "SSIMULACRA2")):
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for rows, label, style in zip(idx, [f"tokc r=0, {labels[0]}", f"tokc r=0, {labels[1]}", "VVC (best scale)"],
                                      ("o--", "o-", "s-")):
            p = points(rows, None, keys, metric)
            ax.plot(p[:, 0], p[:, 1], style, label=label)
        finish_plot(fig, ax, name, f"Kodak, {len({k[0] for k in keys})} images, equal bytes",
                    f"{prefix}-{metric.replace('_', '')}.png", dpi=110)

if __name__ == "__main__":
    main(sys.argv[1:])
