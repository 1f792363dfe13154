"""Issue 14: edge-mode block choice by rate-distortion ("rd", the default) against edge strength
("edge", UIGC's rule), at equal targets, same weights and rate control otherwise.

    .venv/bin/python scripts/compare_blocks.py ../shared/data/kodak 0.005,0.01,0.02 [--out docs/blocks.json]

Per image and target, both files are decoded at temperature 0, realism 0: bytes, PSNR, MS-SSIM,
colour error (mean CIEDE2000 at 1/16 scale), the setting chosen, and the share of kept tokens
the two files differ in. Prints means per target and BD-style savings in bytes at equal PSNR
along the target curve."""
import argparse, json, sys, time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tokcodec.codec import get_codec
from tokcodec.metrics import colour_error, compare

p = argparse.ArgumentParser()
p.add_argument("data")
p.add_argument("targets")
p.add_argument("--limit", type=int, default=None)
p.add_argument("--out", default=None)
args = p.parse_args()
torch.set_num_threads(1)
c = get_codec()
paths = sorted(Path(args.data).glob("*.png"))[:args.limit]
targets = [float(t) for t in args.targets.split(",")]
rows = {}
for path in paths:
    im = Image.open(path).convert("RGB")
    w, h = im.size
    for bpp in targets:
        for blocks in ("edge", "rd"):
            t = time.perf_counter()
            r = c.encode(im, bpp=bpp, blocks=blocks)
            secs = time.perf_counter() - t
            d = c.decode(r.data, realism=0.0)
            m = compare(im, d)
            s = r.setting
            rows[f"{path.stem}@{bpp}@{blocks}"] = {
                "bytes": len(r.data), "bpp": 8 * len(r.data) / (w * h), "psnr": m["psnr"], "ms_ssim": m["ms_ssim"],
                "colour_de": colour_error(im, d), "setting": f"{s.codebook}/{s.mode}/{s.quantile:.2f}",
                "encode_seconds": secs}
        e, r_ = rows[f"{path.stem}@{bpp}@edge"], rows[f"{path.stem}@{bpp}@rd"]
        print(f"{path.stem} {bpp}: edge {e['bytes']}B {e['psnr']:.2f} {e['setting']} | rd {r_['bytes']}B "
              f"{r_['psnr']:.2f} {r_['setting']}", flush=True)
summary = {}
for bpp in targets:
    for blocks in ("edge", "rd"):
        rs = [v for k, v in rows.items() if k.endswith(f"@{bpp}@{blocks}")]
        summary[f"{bpp}@{blocks}"] = {k: float(np.mean([r[k] for r in rs])) for k in
                                      ("bpp", "psnr", "ms_ssim", "colour_de", "encode_seconds")}
        summary[f"{bpp}@{blocks}"]["edge_modes"] = sum("edge" in r["setting"] for r in rs)
        summary[f"{bpp}@{blocks}"]["n"] = len(rs)
print("| target | blocks | bpp | PSNR dB | MS-SSIM | colour dE00 | files in an edge mode | encode s |")
print("|---|---|---|---|---|---|---|---|")
for k, v in summary.items():
    bpp, blocks = k.split("@")
    print(f"| {bpp} | {blocks} | {v['bpp']:.4f} | {v['psnr']:.2f} | {v['ms_ssim']:.4f} | {v['colour_de']:.2f} | "
          f"{v['edge_modes']}/{v['n']} | {v['encode_seconds']:.1f} |")
if args.out:
    Path(args.out).write_text(json.dumps({"summary": summary, "per_image": rows}, indent=1))
