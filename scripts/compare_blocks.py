"""Issue 14: edge-mode block choice by rate-distortion ("rd", the default) against edge strength
("edge", UIGC's rule), at equal targets, same weights and rate control otherwise.

    .venv/bin/python scripts/compare_blocks.py ../shared/data/kodak 0.005,0.01,0.02 [--out docs/blocks.json]

Per image and target, both files are decoded at temperature 0, realism 0: bytes, PSNR, MS-SSIM,
colour error (mean CIEDE2000 at 1/16 scale), the setting chosen and the encode time. Prints means
per target and the BD-rate of rd against edge at equal PSNR and at equal MS-SSIM."""
import argparse, json, sys, time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tokcodec.codec import get_codec
from tokcodec.metrics import colour_error, compare

def bd_rate(rates_a, q_a, rates_b, q_b) -> float:
    """Average change in rate of curve b against curve a at equal quality, in % (negative: b
    needs fewer bytes), over the quality range both cover: log-rate interpolated linearly in
    quality (few points, so no cubic fit)."""
    lo, hi = max(min(q_a), min(q_b)), min(max(q_a), max(q_b))
    if hi <= lo:
        return float("nan")
    qs = np.linspace(lo, hi, 101)
    la = np.interp(qs, *zip(*sorted(zip(q_a, np.log(rates_a)))))
    lb = np.interp(qs, *zip(*sorted(zip(q_b, np.log(rates_b)))))
    return float((np.exp(np.mean(lb - la)) - 1) * 100)


p = argparse.ArgumentParser()
p.add_argument("data")
p.add_argument("targets")
p.add_argument("--limit", type=int, default=None)
p.add_argument("--out", default=None)
p.add_argument("--from-json", default=None, help="only report the summary of an earlier --out file")
args = p.parse_args()
torch.set_num_threads(1)
targets = [float(t) for t in args.targets.split(",")]
rows = json.loads(Path(args.from_json).read_text())["per_image"] if args.from_json else {}
c = None if args.from_json else get_codec()
paths = [] if args.from_json else sorted(Path(args.data).glob("*.png"))[:args.limit]
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
curves = {b: [summary[f"{t}@{b}"] for t in targets] for b in ("edge", "rd")}
for q in ("psnr", "ms_ssim"):
    print(f"BD-rate of rd against edge at equal {q}: "
          f"{bd_rate([v['bpp'] for v in curves['edge']], [v[q] for v in curves['edge']], [v['bpp'] for v in curves['rd']], [v[q] for v in curves['rd']]):+.1f}%")
if args.out:
    Path(args.out).write_text(json.dumps({"summary": summary, "per_image": rows}, indent=1))
