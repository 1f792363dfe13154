"""Benchmark: tokc against the codecs people use, at matched rates, in one command.

    python -m tokcodec.bench --data ../shared/data/kodak [--limit N] [--out docs]

For each image and target bpp, tokc encodes at the target (whole file at or under it) and
decodes at temperature 0 ("tokc") and 1 ("tokc t=1", seed 1); each classic codec (JPEG and WebP through Pillow, AVIF through
Pillow's AVIF plugin, JPEG XL through pillow-jxl-plugin, VVC through vvencapp/vvdecapp when
installed) uses the highest quality setting whose file is at or under the target, or its
lowest setting when even that is over (reported as its floor). Metrics: real bpp, PSNR,
MS-SSIM, SSIMULACRA2 (PyPI `ssimulacra2`, optional), encode/decode time (median of
--repeats runs in this process), and peak memory of one encode+decode in a fresh process.
Then tokc's own speed and peak memory at 0.03 bpp for a Kodak image and a 12-MP mosaic of
Kodak images, each in a fresh process. Writes docs/benchmarks.md, docs/rd-*.png and
docs/samples-*.png.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from .imageio import load_image
from .metrics import compare

TARGETS = (0.005, 0.01, 0.02, 0.03, 0.05)


@dataclass
class Classic:
    name: str
    fmt: str
    qualities: range
    options: Callable[[int], dict]

    def available(self) -> bool:
        try:
            self.encode(Image.new("RGB", (16, 16)), self.qualities[-1])
            return True
        except Exception:  # noqa: BLE001 - plugin missing
            return False

    def encode(self, img: Image.Image, q: int) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format=self.fmt, **self.options(q))
        return buf.getvalue()

    @staticmethod
    def decode(data: bytes) -> Image.Image:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")


def classic_codecs() -> list[Classic]:
    try:
        import pillow_jxl  # noqa: F401 - registers the JXL format
    except ImportError:
        pass
    cands = [
        Classic("JPEG", "JPEG", range(1, 96), lambda q: {"quality": q, "optimize": True}),
        Classic("WebP", "WEBP", range(0, 101), lambda q: {"quality": q, "method": 6}),
        Classic("AVIF", "AVIF", range(0, 101), lambda q: {"quality": q, "speed": 6}),
        Classic("JPEG XL", "JXL", range(0, 100), lambda q: {"quality": q, "effort": 7}),  # 100 = lossless path
    ]
    return [c for c in cands if c.available()]


def at_or_under(c: Classic, img: Image.Image, budget: int, cache: dict | None = None) -> tuple[bytes, int, bool]:
    """Highest quality whose file fits; (data, quality, is_floor). `cache` maps quality to file
    for this image and codec, so the targets of one image share their trial encodes."""
    cache = {} if cache is None else cache

    def enc(q):
        if q not in cache:
            cache[q] = c.encode(img, q)
        return cache[q]

    lo, hi, best = 0, len(c.qualities) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        data = enc(c.qualities[mid])
        if len(data) <= budget:
            best, lo = (data, c.qualities[mid]), mid + 1
        else:
            hi = mid - 1
    if best is None:
        return enc(c.qualities[0]), c.qualities[0], True
    return best[0], best[1], False


def ssimulacra2_score(a: Image.Image, b: Image.Image) -> float | None:
    try:
        from ssimulacra2 import compute_ssimulacra2
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as d:
        pa, pb = Path(d) / "a.png", Path(d) / "b.png"
        a.save(pa)
        b.save(pb)
        return float(compute_ssimulacra2(str(pa), str(pb)))


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


PEAK_SNIPPET = """
import io, json, sys
from PIL import Image
name, path, bpp, fmt, opts = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5])
img = Image.open(path).convert("RGB")
if name == "tokc":
    import tokcodec
    tokcodec.decode(tokcodec.encode(img, bpp))
else:
    if fmt == "JXL":
        import pillow_jxl  # noqa: F401
    buf = io.BytesIO()
    img.save(buf, format=fmt, **opts)
    Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
# VmHWM belongs to this process image; ru_maxrss would carry the parent's peak across exec.
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")))
"""


def peak_memory_mb(name: str, path: Path, bpp: float) -> float | None:
    """Peak resident memory (MB) of a fresh process that encodes and decodes one image
    (classic codecs without torch loaded, at their setting for this target)."""
    fmt, opts = "", {}
    if name != "tokc":
        c = next(c for c in classic_codecs() if c.name == name)
        img = load_image(path)
        _, q, _ = at_or_under(c, img, int(bpp * img.size[0] * img.size[1] / 8))
        fmt, opts = c.fmt, c.options(q)
    r = subprocess.run([sys.executable, "-c", PEAK_SNIPPET, name, str(path), str(bpp), fmt, json.dumps(opts)],
                       capture_output=True, text=True, timeout=1800)
    if r.returncode:
        return None
    return int(r.stdout.strip().splitlines()[-1]) / 1024


def run(files: list[Path], targets, repeats: int, with_ssim2: bool) -> dict:
    from .codec import get_codec
    codec = get_codec()
    classics = classic_codecs()
    rows = []
    for f in files:
        img = load_image(f)
        w, h = img.size
        a = codec.analyse(img)  # shared by the targets (rate control reuses count tables)
        trials = {c.name: {} for c in classics}
        timing = {}  # (codec, data) -> (decoded, encode s, decode s): a floor file is timed once
        for bpp in targets:
            budget = int(bpp * w * h / 8)
            try:
                t0 = time.perf_counter()
                r = codec.encode_analysed(a, budget)
                enc_s = time.perf_counter() - t0
                setting = f"K={r.setting.codebook} {r.setting.mode} q={r.setting.quantile:.2f}"
                for name, temp in (("tokc", 0.0), ("tokc t=1", 1.0)):
                    out, dec_s = timed(lambda: codec.decode(r.data, seed=1, temperature=temp), 1)
                    rows.append(dict(image=f.stem, codec=name, target=bpp, bytes=len(r.data), floor=False,
                                     setting=setting, encode_s=enc_s, decode_s=dec_s, decoded=out))
            except Exception as e:  # noqa: BLE001 - unreachable target
                for name in ("tokc", "tokc t=1"):
                    rows.append(dict(image=f.stem, codec=name, target=bpp, error=str(e)))
            for c in classics:
                data, q, floor = at_or_under(c, img, budget, trials[c.name])
                if (c.name, data) not in timing:
                    _, enc_s = timed(lambda: c.encode(img, q), repeats)
                    out, dec_s = timed(lambda: c.decode(data), repeats)
                    timing[(c.name, data)] = (out, enc_s, dec_s)
                out, enc_s, dec_s = timing[(c.name, data)]
                rows.append(dict(image=f.stem, codec=c.name, target=bpp, bytes=len(data), floor=floor,
                                 setting=f"q={q}", encode_s=enc_s, decode_s=dec_s, decoded=out))
        scored = {}  # identical decoded images (a codec at its floor for several targets) score once
        for row in rows:
            if row.get("image") == f.stem and "decoded" in row and "psnr" not in row:
                key = (row["codec"], row["bytes"], row["decoded"].tobytes())
                if key not in scored:
                    m = compare(img, row["decoded"])
                    m["ssimulacra2"] = ssimulacra2_score(img, row["decoded"]) if with_ssim2 else None
                    scored[key] = m
                row.update(scored[key])
                row["bpp"] = 8 * row["bytes"] / (w * h)
        print(f"{f.stem} done", file=sys.stderr, flush=True)
    return {"rows": rows, "codecs": ["tokc", "tokc t=1"] + [c.name for c in classics]}


SPEED_SNIPPET = """
import json, sys, time
t0 = time.perf_counter()
import torch
import tokcodec
from tokcodec.codec import get_codec
from tokcodec.imageio import load_image
path, bpp = sys.argv[1], float(sys.argv[2])
torch.set_grad_enabled(False)
codec = get_codec()
t1 = time.perf_counter()
img = load_image(path)
t2 = time.perf_counter()
r = codec.encode(img, bpp)
t3 = time.perf_counter()
codec.decode(r.data)
t4 = time.perf_counter()
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"threads": torch.get_num_threads(), "load_s": t1 - t0, "encode_s": t3 - t2, "decode_s": t4 - t3, "bytes": len(r.data),
                  "setting": f"K={r.setting.codebook} {r.setting.mode} q={r.setting.quantile:.2f}",
                  "peak_mb": hwm / 1024, "size": list(img.size)}))
"""


def mosaic(files: list[Path], cols: int = 5, rows: int = 6) -> Image.Image:
    """A 3840x3072 (11.8 MP) photo-like test image: Kodak images tiled at native resolution
    (portrait ones turned), so detail per pixel is that of real photos, unlike an upscale."""
    tiles = []
    for f in files:
        im = load_image(f)
        tiles.append(im if im.width >= im.height else im.transpose(Image.Transpose.ROTATE_90))
    out = Image.new("RGB", (768 * cols, 512 * rows))
    for i in range(cols * rows):
        out.paste(tiles[i % len(tiles)].resize((768, 512)), ((i % cols) * 768, (i // cols) * 512))
    return out


def speed(files: list[Path], bpp: float = 0.03) -> list[dict]:
    """tokc encode (rate control included) and decode time and peak memory, each image in a
    fresh process, for one Kodak image and the 12-MP mosaic."""
    out = []
    with tempfile.TemporaryDirectory() as d:
        big = Path(d) / "mosaic-3840x3072.png"
        mosaic(files).save(big)
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # every core
        for name, path in ((files[0].stem, files[0]), ("12-MP mosaic 3840x3072", big)):
            r = subprocess.run([sys.executable, "-c", SPEED_SNIPPET, str(path), str(bpp)],
                               capture_output=True, text=True, timeout=3600, env=env)
            if r.returncode:
                print(f"speed run failed for {name}: {r.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            row = json.loads(r.stdout.strip().splitlines()[-1])
            row["image"] = name
            out.append(row)
            print(f"speed: {name} {row}", file=sys.stderr, flush=True)
    return out


def summarise(rows, codecs, targets):
    table = {}
    for c in codecs:
        for t in targets:
            rs = [r for r in rows if r["codec"] == c and r["target"] == t and "psnr" in r]
            if not rs:
                continue
            s = {k: statistics.fmean([r[k] for r in rs]) for k in ("bpp", "psnr", "ms_ssim", "encode_s", "decode_s")}
            s2 = [r["ssimulacra2"] for r in rs if r.get("ssimulacra2") is not None]
            s["ssimulacra2"] = statistics.fmean(s2) if s2 else None
            s["floor"] = sum(r["floor"] for r in rs)
            s["n"] = len(rs)
            table[(c, t)] = s
    return table


def write_report(out: Path, files, result, targets, mem, command: str, speeds=()) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    rows, codecs = result["rows"], result["codecs"]
    table = summarise(rows, codecs, targets)
    for metric, label in (("psnr", "PSNR (dB)"), ("ms_ssim", "MS-SSIM"), ("ssimulacra2", "SSIMULACRA2")):
        if all(v.get(metric) is None for v in table.values()):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for c in codecs:
            pts = sorted((v["bpp"], v[metric]) for (cc, _), v in table.items() if cc == c and v.get(metric) is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=c)
        ax.set_xlabel("bits per pixel (whole file)")
        ax.set_ylabel(label)
        ax.set_title(f"Kodak ({len(files)} images): {label}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"rd-{metric.replace('_', '')}.png", dpi=110)
        plt.close(fig)
    # side-by-side crops at 0.03 bpp
    sample_t = 0.03 if 0.03 in targets else targets[-1]
    for f in files[:2]:
        orig = load_image(f)
        tk = next((r for r in rows if r["image"] == f.stem and r["codec"] == "tokc" and r["target"] == sample_t and "decoded" in r), None)
        cl = [r for r in rows if r["image"] == f.stem and not r["codec"].startswith("tokc")
              and r["target"] == sample_t and "decoded" in r]
        if tk is None or not cl:
            continue
        best = max(cl, key=lambda r: r.get("ssimulacra2") or r["ms_ssim"])
        w, h = orig.size
        box = (w // 2 - 128, h // 2 - 128, w // 2 + 128, h // 2 + 128)
        panels = [("original", orig), (f"tokc {tk['bpp']:.4f} bpp", tk["decoded"]),
                  (f"{best['codec']} {best['bpp']:.4f} bpp{' (floor)' if best['floor'] else ''}", best["decoded"])]
        fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
        for ax, (title, im) in zip(axes, panels):
            ax.imshow(np.asarray(im.crop(box).resize((512, 512), Image.NEAREST)))
            ax.set_title(title)
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / f"samples-{f.stem}.png", dpi=90)
        plt.close(fig)
    import PIL
    import torch
    lines = ["# Benchmarks", "", f"Command: `{command}`", "",
             f"Machine: {platform.processor() or platform.machine()}, {platform.system()}, "
             f"{len(os.sched_getaffinity(0))} CPU cores, no GPU used; tokc timings in the main table use "
             f"{torch.get_num_threads()} torch thread(s). Python {platform.python_version()}, "
             f"torch {torch.__version__}, Pillow {PIL.__version__}.", "",
             f"Images: {len(files)} from the Kodak set ({', '.join(f.stem for f in files)}). "
             "bpp is the whole file. Classic codecs use their best quality at or under the target; "
             "`floor` counts images where even their lowest setting is over the target (their real bpp is then higher).",
             "", "| target bpp | codec | real bpp | PSNR dB | MS-SSIM | SSIMULACRA2 | encode s | decode s | floor |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in targets:
        for c in codecs:
            v = table.get((c, t))
            if v is None:
                lines.append(f"| {t} | {c} | unreachable | | | | | | |")
                continue
            s2 = f"{v['ssimulacra2']:.1f}" if v["ssimulacra2"] is not None else "n/a"
            lines.append(f"| {t} | {c} | {v['bpp']:.4f} | {v['psnr']:.2f} | {v['ms_ssim']:.4f} | {s2} | "
                         f"{v['encode_s']:.3f} | {v['decode_s']:.3f} | {v['floor']}/{v['n']} |")
    if mem:
        lines += ["", "Peak resident memory of one encode+decode in a fresh process (MB):", "",
                  "| codec | image | peak MB |", "|---|---|---|"]
        lines += [f"| {c} | {img} | {m:.0f} |" for (c, img), m in mem.items() if m is not None]
    if speeds:
        lines += ["", "tokc speed and memory on this CPU: `--bpp 0.03` (rate control included) and a "
                  "temperature-0 decode, each image in a fresh process; model loading is separate:", "",
                  "| image | pixels | setting | bytes | encode s | decode s | model load s | peak MB | threads |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['image']} | {r['size'][0]}x{r['size'][1]} | {r['setting']} | {r['bytes']} | "
                  f"{r['encode_s']:.1f} | {r['decode_s']:.1f} | {r['load_s']:.1f} | {r['peak_mb']:.0f} | {r['threads']} |"
                  for r in speeds]
    lines += ["", "Plots: " + ", ".join(f"`{p.name}`" for p in sorted(out.glob("rd-*.png"))),
              "Samples (0.03 bpp, centre crop 256x256 shown at 2x): " + ", ".join(f"`{p.name}`" for p in sorted(out.glob("samples-*.png")))]
    (out / "benchmarks.md").write_text("\n".join(lines) + "\n")
    slim = [{k: v for k, v in r.items() if k != "decoded"} for r in rows]
    (out / "benchmarks.json").write_text(json.dumps(slim, indent=1))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tokcodec.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/kodak")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--targets", default=",".join(map(str, TARGETS)))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-ssimulacra2", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-speed", action="store_true", help="skip tokc's Kodak and 12-MP speed runs")
    ap.add_argument("--out", default="docs")
    args = ap.parse_args(argv)
    data = Path(args.data)
    if not data.exists():
        raise SystemExit(f"error: {data} not found; pass --data DIR")
    files = sorted(p for p in data.iterdir() if p.suffix.lower() in (".png", ".jpg"))[:args.limit]
    targets = [float(t) for t in args.targets.split(",")]
    result = run(files, targets, args.repeats, not args.no_ssimulacra2)
    mem = {}
    if not args.no_memory:
        for c in result["codecs"]:
            if c != "tokc t=1":  # same process as tokc, only the decode temperature differs
                mem[(c, files[0].stem)] = peak_memory_mb(c, files[0], 0.03)
    speeds = [] if args.no_speed else speed(files)
    write_report(Path(args.out), files, result, targets, mem, "python -m tokcodec.bench " + " ".join(argv or sys.argv[1:]),
                 speeds)
    print(f"wrote {args.out}/benchmarks.md", file=sys.stderr)


if __name__ == "__main__":
    main()
