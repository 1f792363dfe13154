"""Grey in, grey out: every image of --data made grey (L, then RGB), tokc at each target (default
realism) and VVC at tokc's bytes (the scale with the best MS-SSIM), reporting the largest
difference between two colour channels of a pixel (0 = grey) and PSNR. Writes OUT/grey.md.

    python -m tokcodec.bench_grey --data ../shared/data/kodak [--targets 0.01,0.03] [--out docs]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image


def measure(files, targets) -> list[dict]:
    import torch
    from .classic import codecs
    from .codec import get_codec
    from .metrics import compare, grey_error
    torch.set_grad_enabled(False)
    c = get_codec()
    vvc = [x for x in codecs(names={"VVC"})[0] if x.name == "VVC"]
    rows = []
    for f in files:
        g = Image.open(f).convert("L").convert("RGB")
        a = c.analyse(g)
        for t in targets:
            r = c.encode_analysed(a, int(t * g.size[0] * g.size[1] / 8))
            d = c.decode(r.data)
            row = {"image": f.stem, "target": t, "bytes": len(r.data), "tokc_grey": grey_error(d),
                   "tokc_psnr": compare(g, d)["psnr"]}
            best = None
            for v in vvc:
                got = v.best_under(g, len(r.data))
                if got is not None:
                    out = v.decode(got[0], g.size)
                    m = compare(g, out)
                    if best is None or m["ms_ssim"] > best[0]["ms_ssim"]:
                        best = (m, out, v.scale)
            if best:
                row.update(vvc_grey=grey_error(best[1]), vvc_psnr=best[0]["psnr"], vvc_scale=best[2])
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def markdown(rows: list[dict], cmd: str) -> str:
    lines = ["# Grey in, grey out", "", f"Command: `{cmd}`. Every image made grey (Pillow `L`, then RGB); tokc "
             "decodes at its default realism; VVC gets tokc's file size as its budget (best scale by MS-SSIM). "
             "`max channel difference`: the largest difference between two colour channels of one pixel over "
             "all images (0 = every pixel grey).", "",
             "| target bpp | images | tokc max channel difference | VVC max channel difference | tokc PSNR dB | VVC PSNR dB |",
             "|---|---|---|---|---|---|"]
    for t in sorted({r["target"] for r in rows}):
        rs = [r for r in rows if r["target"] == t]
        vv = [r for r in rs if "vvc_grey" in r]
        lines.append(f"| {t:g} | {len(rs)} | {max(r['tokc_grey'] for r in rs)} | "
                     f"{max((r['vvc_grey'] for r in vv), default='n/a')} | {np.mean([r['tokc_psnr'] for r in rs]):.2f} | "
                     f"{np.mean([r['vvc_psnr'] for r in vv]):.2f} |" if vv else "")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tokcodec.bench_grey", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/kodak")
    ap.add_argument("--targets", default="0.01,0.03")
    ap.add_argument("--out", default="docs")
    ap.add_argument("--rows", default=None, help="format rows measured before (JSON) instead of measuring")
    args = ap.parse_args(argv)
    if args.rows:
        rows = json.loads(Path(args.rows).read_text())
    else:
        files = sorted(p for p in Path(args.data).iterdir() if p.suffix.lower() in (".png", ".jpg"))
        rows = measure(files, [float(t) for t in args.targets.split(",")])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = f"python -m tokcodec.bench_grey --data {args.data} --targets {args.targets} --out {args.out}"
    (out / "grey.md").write_text(markdown(rows, cmd))


if __name__ == "__main__":
    main()
