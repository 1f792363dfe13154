"""Benchmark: tokc against the classic codecs at equal bytes, per image, in one command.

    python -m tokcodec.bench --data ../shared/data/kodak [--split holdout]
        [--targets 0.005,0.01,0.02,0.03,0.05] [--realism 0,0.6,1] [--limit N] [--out docs]

For each image and target, tokc encodes at the target (rate control: whole file at or under it)
and its file is decoded at each --realism value (temperature 0, seed 1). That file's size is the
budget of every classic codec for that image: each codec (VVC through vvencapp/vvdecapp,
AVIF, JPEG XL, WebP, JPEG through Pillow) at each scale (full, 1/2, 1/4: Lanczos down before
coding, up after decoding) uses its highest quality whose counted file (see classic.py for
exactly what is counted) is at or under tokc's file. Per codec the scale with the best MS-SSIM
is its "best" row and the table says which scale won; VVC is also reported at each scale.
A codec that fits at no scale is counted as missing for that image.

Measures: bpp, PSNR, MS-SSIM, SSIMULACRA2 (PyPI `ssimulacra2`), butteraugli (Debian package
`butteraugli`), the high-frequency energy ratio (decoded / original luma power between 1/4
Nyquist and Nyquist; median over images) and colour error (mean CIEDE2000 on both images
box-downscaled 16x). `--split holdout` benches the second test set instead: the training
photos that `train.data.is_holdout` sets aside (never trained on since the split).

Also tokc's speed and peak memory at 0.03 bpp (a Kodak image, median of three fresh-process
runs, and a 12-MP mosaic) and folder conversion of the whole set at each effort, unless
--no-speed. Writes OUT/benchmarks.md, OUT/benchmarks.json,
OUT/rd-*.png and OUT/crops-<target>.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .classic import VVC_PRESET, codecs as classic_codecs, find_vvc, rgb_to_yuv420, vvdec_command, vvenc_command
from .imageio import load_image
from .metrics import butteraugli_score, colour_error, compare, image_to_tensor, ms_ssim, ssimulacra2_score

TARGETS = (0.005, 0.01, 0.02, 0.03, 0.05)
REALISMS = (0.0, 0.6, 1.0)
# crops for the sheets: (image, box) with faces, foliage, text and water
CROPS = (("kodim15", (330, 120, 458, 248)), ("kodim13", (120, 200, 248, 328)),
         ("kodim10", (130, 40, 258, 168)), ("kodim14", (470, 300, 598, 428)), ("kodim23", (140, 120, 268, 248)))


def score(img, out, full: bool) -> dict:
    m = compare(img, out)
    m["colour_de"] = colour_error(img, out)
    if full:
        m["ssimulacra2"] = ssimulacra2_score(img, out)
        m["butteraugli"] = butteraugli_score(img, out)
    return m


def quick_msssim(ref, out) -> float:
    """float32 MS-SSIM, only to pick a codec's best scale."""
    return float(ms_ssim(ref, image_to_tensor(out)[None])[0])


def bench_image(codec, img: Image.Image, name: str, targets, realisms, classics, full: bool,
                keep: bool) -> list[dict]:
    """Rows for one image: tokc at each realism, then every classic codec at tokc's bytes."""
    from .codec import CodecError
    w, h = img.size
    p = codec.prepare(img)  # shared by the targets: each coded scale is analysed once
    ref = image_to_tensor(img)[None]
    rows = []
    for t in targets:
        try:
            t0 = time.perf_counter()
            r = codec.encode_prepared(p, int(t * w * h / 8))
            enc_s = time.perf_counter() - t0
        except CodecError as e:
            rows.append(dict(image=name, target=t, codec="tokc", error=str(e)))
            continue
        budget = len(r.data)
        setting = f"K={r.setting.codebook} {r.setting.mode} q={r.setting.quantile:.2f}" + (
            f" at {r.coded_size[0]}x{r.coded_size[1]}" if r.coded_size else "")
        for rr in realisms:
            t0 = time.perf_counter()
            out = codec.decode(r.data, seed=1, temperature=0.0, realism=rr)
            rows.append(dict(image=name, target=t, codec=f"tokc r={rr:g}", bytes=budget, setting=setting,
                             encode_s=enc_s, decode_s=time.perf_counter() - t0, decoded=out))
        by_name: dict[str, list[dict]] = {}
        for c in classics:
            fit = c.best_under(img, budget)
            if fit is None:
                continue
            data, q = fit
            out = c.decode(data, img.size)
            by_name.setdefault(c.name, []).append(dict(image=name, target=t, codec=c.label, bytes=c.size(data),
                                                       setting=f"q={q}", scale=c.scale, decoded=out,
                                                       select=quick_msssim(ref, out)))
        for cname, cands in by_name.items():
            best = max(cands, key=lambda x: x["select"])
            rows.append({**best, "codec": f"{cname} best", "label": best["codec"]})
            if cname == "VVC":
                rows += [x for x in cands if x["scale"] == 1]
        for c in {x.name for x in classics} - set(by_name):
            rows.append(dict(image=name, target=t, codec=f"{c} best", error="no setting at or under tokc's file"))
    memo = {}
    for row in rows:
        if "decoded" not in row:
            continue
        key = row["decoded"].tobytes()
        if key not in memo:
            memo[key] = score(img, row["decoded"], full)
        row.update(memo[key])
        row["bpp"] = 8 * row["bytes"] / (w * h)
        if not keep:
            del row["decoded"]
    return rows


def summarise(rows, targets) -> dict:
    out = {}
    names = list(dict.fromkeys(r["codec"] for r in rows))
    for t in targets:
        for c in names:
            rs = [r for r in rows if r["codec"] == c and r["target"] == t]
            ok = [r for r in rs if "psnr" in r]
            if not rs:
                continue
            s = {"n": len(ok), "missing": len(rs) - len(ok)}
            if ok:
                for k in ("bpp", "psnr", "ms_ssim", "ssimulacra2", "butteraugli", "colour_de"):
                    vals = [r[k] for r in ok if r.get(k) is not None]
                    s[k] = statistics.fmean(vals) if vals else None
                s["hf_ratio"] = statistics.median(r["hf_ratio"] for r in ok)
                scales = [r.get("label", r["codec"]) for r in ok if c.endswith(" best")]
                if scales:
                    s["scales"] = {k: scales.count(k) for k in sorted(set(scales))}
            out[(c, t)] = s
    return out


def _f(v, fmt):
    return "n/a" if v is None else format(v, fmt)


def table_lines(summary: dict, targets) -> list[str]:
    lines = ["| target bpp | codec | real bpp | PSNR dB | MS-SSIM | SSIMULACRA2 | butteraugli | HF ratio (median) "
             "| colour ΔE00 | images | scale won |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in targets:
        for (c, tt), s in summary.items():
            if tt != t:
                continue
            if not s["n"]:
                lines.append(f"| {t} | {c} | no fit | | | | | | | 0/{s['missing']} | |")
                continue
            won = ", ".join(f"{k.split(' ', 1)[1] if ' ' in k else 'full'} {v}" for k, v in s.get("scales", {}).items())
            lines.append(f"| {t} | {c} | {s['bpp']:.4f} | {s['psnr']:.2f} | {s['ms_ssim']:.4f} | "
                         f"{_f(s['ssimulacra2'], '.1f')} | {_f(s['butteraugli'], '.2f')} | {s['hf_ratio']:.3f} | "
                         f"{_f(s['colour_de'], '.2f')} | {s['n']}/{s['n'] + s['missing']} | {won} |")
    return lines


def per_image_lines(rows, codecs_shown) -> list[str]:
    lines = ["| image | target | " + " | ".join(f"{c} bytes / PSNR / MS-SSIM / SSIMU2" for c in codecs_shown) + " |",
             "|---|---|" + "---|" * len(codecs_shown)]
    for img in dict.fromkeys(r["image"] for r in rows):
        for t in dict.fromkeys(r["target"] for r in rows):
            cells = []
            for c in codecs_shown:
                r = next((r for r in rows if r["image"] == img and r["target"] == t and r["codec"] == c), None)
                if r is None or "psnr" not in r:
                    cells.append("no fit" if r is not None else "")
                else:
                    lab = f" ({r['label'].split(' ', 1)[1]})" if " " in r.get("label", "") else ""
                    cells.append(f"{r['bytes']}{lab} / {r['psnr']:.2f} / {r['ms_ssim']:.3f} / "
                                 f"{_f(r.get('ssimulacra2'), '.1f')}")
            lines.append(f"| {img} | {t} | " + " | ".join(cells) + " |")
    return lines


def crop_sheet(rows, originals: dict, t: float, columns: list[str], out: Path) -> bool:
    """Original | each column codec, 2x crops (nearest), one row per CROPS image. JPEG q95 4:4:4."""
    picks = [(n, box) for n, box in CROPS if n in originals]
    if not picks:
        return False
    cw = 256
    sheet = Image.new("RGB", ((len(columns) + 1) * cw, len(picks) * (cw + 16) + 16), "white")
    d = ImageDraw.Draw(sheet)
    for j, title in enumerate(["original"] + columns):
        d.text((j * cw + 4, 2), title, fill="black")
    for i, (n, box) in enumerate(picks):
        y = 16 + i * (cw + 16)
        ims = [("", originals[n])]
        for c in columns:
            r = next((r for r in rows if r["image"] == n and r["target"] == t and r["codec"] == c and "decoded" in r), None)
            ims.append((f"{r['bytes']} B" + (f" {r['label']}" if "label" in r else "") if r else "no fit",
                        r["decoded"] if r else None))
        for j, (cap, im) in enumerate(ims):
            if im is not None:
                sheet.paste(im.crop(box).resize((cw, cw), Image.NEAREST), (j * cw, y))
            d.text((j * cw + 4, y + cw + 1), f"{n} {cap}" if j == 0 else cap, fill="black")
    sheet.save(out, quality=95, subsampling=0)
    return True


def rd_plots(summary: dict, codecs_shown, out: Path, title: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = []
    for metric, label in (("psnr", "PSNR (dB)"), ("ms_ssim", "MS-SSIM"), ("ssimulacra2", "SSIMULACRA2"),
                          ("hf_ratio", "HF energy ratio (median)")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for c in codecs_shown:
            pts = sorted((s["bpp"], s[metric]) for (cc, _), s in summary.items()
                         if cc == c and s.get("n") and s.get(metric) is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=c)
        name = f"rd-{metric.replace('_', '')}.png"
        finish_plot(fig, ax, label, f"{title}: {label}", out / name)
        names.append(name)
    return names


def finish_plot(fig, ax, ylabel: str, title: str, path, dpi: int = 100) -> None:
    """Label a rate-distortion plot (x: whole-file bpp), save it to `path` and close it."""
    import matplotlib.pyplot as plt
    ax.set_xlabel("bits per pixel (whole file)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


SPEED_SNIPPET = """
import json, sys, time
t0 = time.perf_counter()
import torch
from tokcodec.codec import get_codec
from tokcodec.imageio import load_image
job, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
torch.set_grad_enabled(False)
codec = get_codec()
t1 = time.perf_counter()
row = {"threads": torch.get_num_threads(), "load_s": t1 - t0}
if job == "encode":
    img = load_image(path)
    t2 = time.perf_counter()
    r = codec.encode(img, float(sys.argv[4]))
    row["encode_s"] = time.perf_counter() - t2
    open(out, "wb").write(r.data)
    row.update(bytes=len(r.data), setting=f"K={r.setting.codebook} {r.setting.mode} q={r.setting.quantile:.2f}",
               size=list(img.size), coded=list(r.coded_size or img.size))
else:
    data = open(path, "rb").read()
    t2 = time.perf_counter()
    codec.decode(data).save(out)
    row["decode_s"] = time.perf_counter() - t2
row["peak_mb"] = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
print(json.dumps(row))
"""


def mosaic(files: list[Path], cols: int = 5, rows: int = 6) -> Image.Image:
    """A 3840x3072 (11.8 MP) photo-like test image: Kodak images tiled at native resolution."""
    tiles = []
    for f in files:
        im = load_image(f)
        tiles.append(im if im.width >= im.height else im.transpose(Image.Transpose.ROTATE_90))
    out = Image.new("RGB", (768 * cols, 512 * rows))
    for i in range(cols * rows):
        out.paste(tiles[i % len(tiles)].resize((768, 512)), ((i % cols) * 768, (i // cols) * 512))
    return out


SPEED_RUNS = 3  # fresh-process runs of the Kodak image (median); the 12-MP photo runs once
# The reference the speed section measures in the same run: VVenC at the preset the speed issue
# names (issue 15: "VVenC (preset faster) ... encode such a photo in a few seconds"), with as
# many threads as tokc uses, at a fixed low-rate QP (VVenC's time varies little with QP there)
REFERENCE_PRESET = "faster"
REFERENCE_QP = 51


def vvc_speed(path: Path, threads: int) -> dict | None:
    """Wall time of VVenC (REFERENCE_PRESET, REFERENCE_QP, one intra frame, `threads` threads)
    encoding the image from 8-bit YUV 4:2:0 and of VVdeC decoding it (the YUV conversions not
    counted), with the bitstream's size; None without vvencapp/vvdecapp."""
    exes = find_vvc()
    if exes is None:
        return None
    yuv, w, h = rgb_to_yuv420(load_image(path))
    with tempfile.TemporaryDirectory() as d:
        src, bits, back = Path(d) / "in.yuv", Path(d) / "out.266", Path(d) / "out.yuv"
        src.write_bytes(yuv)
        t0 = time.perf_counter()
        subprocess.run(vvenc_command(exes[0], src, w, h, REFERENCE_QP, bits, REFERENCE_PRESET, threads),
                       check=True, capture_output=True)
        t1 = time.perf_counter()
        subprocess.run(vvdec_command(exes[1], bits, back, threads), check=True, capture_output=True)
        return {"encode_s": t1 - t0, "decode_s": time.perf_counter() - t1, "bytes": bits.stat().st_size + 4}


def speed(files: list[Path], bpp: float = 0.03) -> tuple[list[dict], list[dict]]:
    """tokc encode (rate control included) and decode time and peak memory, each in its own
    fresh process (the decode's peak is the decoder's alone): the first image SPEED_RUNS times
    (medians, largest peaks) and a 12-MP mosaic once; and folder conversion of all `files`
    (`tokc encode DIR -o OUT`, default workers) at each effort."""
    out = []
    with tempfile.TemporaryDirectory() as d:
        big = Path(d) / "mosaic-3840x3072.png"
        mosaic(files).save(big)
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}

        def run(*args) -> dict | None:
            r = subprocess.run([sys.executable, "-c", SPEED_SNIPPET, *map(str, args)],
                               capture_output=True, text=True, timeout=3600, env=env)
            if r.returncode:
                print(f"speed run failed for {args[1]}: {r.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                return None
            return json.loads(r.stdout.strip().splitlines()[-1])
        for name, path, runs in ((files[0].stem, files[0], SPEED_RUNS), ("12-MP mosaic 3840x3072", big, 1)):
            tkc = Path(d) / "speed.tkc"
            got = []
            for _ in range(runs):
                enc = run("encode", path, tkc, bpp)
                dec = enc and run("decode", tkc, Path(d) / "speed.png")
                if dec:
                    got.append({**enc, "image": name, "decode_s": dec["decode_s"], "encode_peak_mb": enc["peak_mb"],
                                "decode_peak_mb": dec["peak_mb"], "load_s": max(enc["load_s"], dec["load_s"])})
            if got:
                med = {k: float(np.median([g[k] for g in got])) for k in ("encode_s", "decode_s", "load_s")}
                peaks = {k: max(g[k] for g in got) for k in ("encode_peak_mb", "decode_peak_mb")}
                ref = [vvc_speed(path, got[0]["threads"]) for _ in range(runs)]
                vvc = ({k: float(np.median([r[k] for r in ref])) for k in ("encode_s", "decode_s", "bytes")}
                       if all(ref) else None)
                out.append({**got[0], **med, **peaks, "runs": len(got), "vvc": vvc})
        folder = Path(d) / "photos"
        folder.mkdir()
        for f in files:
            (folder / f.name).symlink_to(f.resolve())
        folders = []
        for effort in ("full", "fast"):
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "tokcodec.cli", "encode", str(folder), "-o",
                                str(Path(d) / f"out-{effort}"), "--bpp", str(bpp), "--effort", effort, "-q"],
                               capture_output=True, text=True, timeout=7200, env=env)
            seconds = time.perf_counter() - t0
            if r.returncode:
                print(f"folder conversion failed ({effort}): {r.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            folders.append({"effort": effort, "images": len(files), "seconds": seconds,
                            "per_min": 60 * len(files) / seconds})
    return out, folders


def speed_lines(speeds: list[dict], folders: list[dict]) -> list[str]:
    """The speed section of benchmarks.md (speed.md with --speed-only) from `speed`'s results."""
    lines: list[str] = []
    if speeds:
        lines += ["", "## tokc speed and memory", "", "`--bpp 0.03` (rate control included) and a decode at the "
                  "default realism, each run in a fresh process (times: median of the runs; peaks: largest):", "",
                  "| image | pixels | setting | bytes | runs | encode s | decode s | model load s | encode peak MB | "
                  "decode peak MB | threads |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['image']} | {r['size'][0]}x{r['size'][1]} | {r['setting']} | {r['bytes']} | {r['runs']} | "
                  f"{r['encode_s']:.1f} | {r['decode_s']:.1f} | {r['load_s']:.1f} | {r['encode_peak_mb']:.0f} | "
                  f"{r['decode_peak_mb']:.0f} | {r['threads']} |" for r in speeds]
        refs = [r for r in speeds if r.get("vvc")]
        if refs:
            lines += ["", f"Reference measured in the same run, on the same images and threads: VVenC `--preset "
                      f"{REFERENCE_PRESET} -q {REFERENCE_QP}` (one intra frame, from 8-bit YUV 4:2:0) and VVdeC, "
                      "wall time of each tool (median of the same number of runs):", "",
                      "| image | VVC bytes | VVenC encode s | VVdeC decode s | tokc / VVenC encode | "
                      "tokc / VVdeC decode |", "|---|---|---|---|---|---|"]
            lines += [f"| {r['image']} | {r['vvc']['bytes']:.0f} | {r['vvc']['encode_s']:.2f} | "
                      f"{r['vvc']['decode_s']:.2f} | {r['encode_s'] / r['vvc']['encode_s']:.1f} | "
                      f"{r['decode_s'] / r['vvc']['decode_s']:.1f} |" for r in refs]
    if folders:
        lines += ["", "Folder conversion (`tokc encode DIR -o OUT --bpp 0.03 --effort E`, default workers, model "
                  "loads included):", "", "| effort | images | seconds | images/min |", "|---|---|---|---|"]
        lines += [f"| {f['effort']} | {f['images']} | {f['seconds']:.0f} | {f['per_min']:.1f} |" for f in folders]
    if speeds or folders:
        lines += ["", "Issue 15's bars on a 2-core CPU: Kodak encode <= 1.0 s and decode <= 0.6 s; the 12-MP photo "
                  "encoded and decoded in <= 15 s each, peak <= 1 GB; a folder of the 24 Kodak images at >= 60 "
                  "images/min."]
    return lines


_WORKER: dict = {}


def _work(job):
    """One image in a worker process (model and codecs loaded once per process, one thread)."""
    f, targets, realisms, names, full, keep = job
    if not _WORKER:
        import torch
        torch.set_num_threads(1)
        torch.set_grad_enabled(False)
        from .codec import get_codec
        _WORKER["codec"] = get_codec()
        _WORKER["classics"] = classic_codecs(names=names)[0]
    img = load_image(f)
    t0 = time.time()
    rows = bench_image(_WORKER["codec"], img, f.stem, targets, realisms, _WORKER["classics"], full, keep)
    return f, img if keep else None, rows, time.time() - t0


def run_set(files, targets, realisms, names, full: bool, jobs: int, keep_names=()) -> tuple[list, dict]:
    import multiprocessing as mp
    rows, originals = [], {}
    work = [(f, targets, realisms, names, full, f.stem in keep_names) for f in files]
    with mp.get_context("spawn").Pool(jobs) as pool:
        for i, (f, img, r, secs) in enumerate(pool.imap(_work, work)):
            rows += r
            if img is not None:
                originals[f.stem] = img
            print(f"[{i + 1}/{len(files)}] {f.stem} {secs:.0f}s", file=sys.stderr, flush=True)
    return rows, originals


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tokcodec.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/kodak")
    ap.add_argument("--split", default="all", choices=["all", "holdout"],
                    help="holdout: bench only the held-out photos of --data (no SSIMULACRA2/butteraugli)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--targets", default=",".join(map(str, TARGETS)))
    ap.add_argument("--realism", default=",".join(map(str, REALISMS)))
    ap.add_argument("--codecs", default=None, help="only these classic codecs, e.g. VVC,AVIF")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--speed-only", action="store_true",
                    help="only the speed section (tokc against the VVC reference): OUT/speed.md")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (one image each, one thread)")
    ap.add_argument("--out", default="docs")
    args = ap.parse_args(argv)
    import torch
    torch.set_grad_enabled(False)
    from .codec import get_codec
    from .train.data import list_images
    data = Path(args.data)
    if not data.exists():
        raise SystemExit(f"error: {data} not found; pass --data DIR")
    if args.split == "holdout":  # the second test set: held-out training photos, lighter measures
        files = list_images(data, "holdout")[:args.limit]
    else:
        files = sorted(p for p in data.iterdir() if p.suffix.lower() in (".png", ".jpg"))[:args.limit]
    targets = [float(t) for t in args.targets.split(",")]
    realisms = [float(r) for r in args.realism.split(",")]
    names = set(args.codecs.split(",")) if args.codecs else None
    classics, notes = classic_codecs(names=names)
    codec = get_codec()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.speed_only:
        speeds, folders = speed(files)
        head = ["# tokc speed against the VVC reference (`make bench-speed`)", "",
                f"Command: `python -m tokcodec.bench {' '.join(argv or sys.argv[1:])}`. Machine: "
                f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores, no GPU; model "
                f"`{codec.model.model_id.hex()}`."]
        (out / "speed.md").write_text("\n".join(head + speed_lines(speeds, folders)) + "\n")
        print(f"wrote {out}/speed.md", file=sys.stderr)
        return
    t_start = time.time()
    full = args.split != "holdout"
    rows, originals = run_set(files, targets, realisms, names, full, args.jobs, {n for n, _ in CROPS})
    kodak_min = (time.time() - t_start) / 60
    tokc_cols = [f"tokc r={r:g}" for r in realisms]
    shown = tokc_cols + ["VVC", "VVC 1/2", "VVC 1/4"] + [f"{n} best" for n in ("VVC", "AVIF", "JPEG XL", "WebP", "JPEG")]
    summary = summarise(rows, targets)
    plots = rd_plots(summary, tokc_cols + ["VVC best", "AVIF best"], out, f"Kodak ({len(files)} images)")
    sheets = [f"crops-{t:g}.jpg" for t in targets
              if crop_sheet(rows, originals, t, tokc_cols + ["VVC best", "AVIF best"], out / f"crops-{t:g}.jpg")]
    speeds, folders = ([], []) if args.no_speed else speed(files)
    import PIL
    cmd = "python -m tokcodec.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["# Benchmarks: tokc against classic codecs at equal bytes", "",
             f"Command: `{cmd}` ({kodak_min:.0f} min for the Kodak part on this machine).", "",
             f"Machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores, no GPU. Python "
             f"{platform.python_version()}, torch {torch.__version__}, Pillow {PIL.__version__}; model "
             f"`{codec.model.model_id.hex()}`" + (f", decoder `{codec.model.decoder_path.name}`" if codec.model.decoder_path else "") + ".", "",
             "Per image and target, tokc's file (rate control at the target) sets the budget; every classic codec "
             "uses its best setting whose counted file is at or under tokc's own file for that image, at full size, "
             "1/2 or 1/4 (Lanczos down and up); `best` rows take the scale with the best MS-SSIM per image and "
             "`scale won` counts which. VVC: VVenC 1.14.0 `--preset " + VVC_PRESET + "`, one intra frame, QP 0-63, "
             "8-bit YUV 4:2:0 in and out; its counted size is the raw bitstream + 4 bytes (width, height), + 4 more "
             "when downscaled. Pillow codecs: the file as written (+ 4 bytes when downscaled). tokc rows decode "
             "the same file at each realism r (temperature 0, seed 1). HF ratio: decoded over original luma power "
             "between 1/4 Nyquist and Nyquist (median; 1.0 = as much fine detail as the original). Colour ΔE00: "
             "mean CIEDE2000 on both images box-downscaled 16x. `images` = images where the codec fits / all.", ""]
    lines += [f"Note: {n}." for n in notes] + ([""] if notes else [])
    set_name = (f"Second test set: {len(files)} held-out training photos (SHA-256 of the file name, first "
                "byte < 8; never trained on since the split; SSIMULACRA2 and butteraugli skipped)"
                if args.split == "holdout" else f"Kodak ({len(files)} images)")
    lines += [f"## {set_name}", ""] + table_lines(summary, targets)
    lines += ["", "Plots: " + ", ".join(f"![{p}]({p})" for p in plots), "",
              "Crop sheets (original | tokc at each realism | VVC best | AVIF best, equal bytes, 128x128 crops shown "
              "at 2x, JPEG q95 4:4:4): " + ", ".join(f"[{s}]({s})" for s in sheets), ""]
    lines += speed_lines(speeds, folders)
    per_cols = tokc_cols[:1] + tokc_cols[-1:] + ["VVC best", "AVIF best"]
    lines += ["", "## Per image (Kodak)", ""] + per_image_lines(rows, per_cols)
    (out / "benchmarks.md").write_text("\n".join(lines) + "\n")
    slim = [{k: v for k, v in r.items() if k != "decoded"} for r in rows]
    (out / "benchmarks.json").write_text(json.dumps(slim, indent=0))
    print(f"wrote {out}/benchmarks.md", file=sys.stderr)


if __name__ == "__main__":
    main()
