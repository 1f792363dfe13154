"""Evaluate the weights on a folder of images (Kodak by default; never train on it).

    python -m tokcodec.evaluate --data ../shared/data/kodak [--sections tokenizer,prior,rate]
        [--limit N] [--images kodim01,kodim23] [--train-data DIR] [--json out.json]

Sections:
  tokenizer  PSNR / MS-SSIM with every token kept, per K; codebook usage (share of codes used,
             perplexity) on these images plus a sample of training images.
  prior      per K, mode entire: bits per kept token from the real file (token_bits /
             tokens_kept) against log2 K (uniform), against a unigram model of training tokens
             (marginal baseline) and against the model's own information content (coder
             overhead); network passes and prior time per image.
  rate       --bpp targets: real bpp, setting chosen, PSNR / MS-SSIM at temperature 0 and 1.
  modes      rate control restricted to each mask mode (--modes), every target, decoded at
             temperature 0 and 1; a mode that cannot reach a target on an image is counted, not
             averaged in.
  realism    rate control at --targets, each file decoded (temperature 0, seed 1) at every
             --realism value: PSNR, MS-SSIM, SSIMULACRA2 (--ssimulacra2), butteraugli (when the
             `butteraugli` program is installed) and the high-frequency energy ratio (median).
             `--decoder runs/realism/last.pt` scores a training checkpoint instead of the
             shipped decoder.
  edge       the value of edge preservation at equal rate: for each K, plain checkerboard
             (stages 0+1, half the tokens) against edge_more (stage 0 plus the edge blocks) at the
             largest edge-block share whose file is no bigger than the checkerboard file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from .codec import Codec, CodecError, Setting
from .imageio import load_image
from .metrics import butteraugli_score, compare
from .schedule import n_stages

TARGETS = (0.005, 0.01, 0.02, 0.03, 0.05)


def images(folder: Path, names: list[str] | None, limit: int | None) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if names:
        files = [f for f in files if f.stem in names]
    return files[:limit] if limit else files


def mean(xs):
    return float(statistics.fmean(xs)) if xs else float("nan")


def unigram_bits(codec: Codec, train_dir: Path | None, limit: int) -> dict[int, np.ndarray]:
    """-log2 p(code) under a unigram model of training tokens (add-one smoothing)."""
    counts = {k: np.ones(k) for k in codec.model.codebooks}
    if train_dir is not None:
        every = sorted(train_dir.iterdir())
        for f in every[::max(1, len(every) // limit)][:limit]:
            try:
                a = codec.analyse(load_image(f))
            except ValueError:
                continue
            for k in counts:
                counts[k] += np.bincount(codec.tokens_for(a, k).ravel(), minlength=k)
    return {k: -np.log2(c / c.sum()) for k, c in counts.items()}, counts


def eval_tokenizer(codec: Codec, files, train_counts) -> dict:
    rows = {k: {"psnr": [], "ms_ssim": []} for k in codec.model.codebooks}
    used = {k: np.zeros(k) for k in codec.model.codebooks}
    per_image = {}
    for f in files:
        img = load_image(f)
        a = codec.analyse(img)
        per_image[f.stem] = {}
        for k in codec.model.codebooks:
            t = codec.tokens_for(a, k)
            used[k] += np.bincount(t.ravel(), minlength=k)
            m = compare(img, codec.render(t, k, img.size, fidelity=codec.model.fidelity))
            rows[k]["psnr"].append(m["psnr"])
            rows[k]["ms_ssim"].append(m["ms_ssim"])
            per_image[f.stem][k] = m
    out = {}
    for k in codec.model.codebooks:
        c = used[k] + train_counts[k] - 1
        p = c / c.sum()
        out[k] = {"psnr": mean(rows[k]["psnr"]), "ms_ssim": mean(rows[k]["ms_ssim"]),
                  "codes_used": float((c > 0).mean()),
                  "perplexity": float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()))}
    return {"summary": out, "per_image": per_image}


def eval_prior(codec: Codec, files, unigram) -> dict:
    per_image, summary = {}, {}
    for k in codec.model.codebooks:
        bits, info, marg, times = [], [], [], []
        for f in files:
            img = load_image(f)
            a = codec.analyse(img)
            t0 = time.perf_counter()
            r = codec.encode_setting(a, Setting(k, "entire"))
            times.append(time.perf_counter() - t0)
            toks = codec.tokens_for(a, k)
            bpt = r.token_bits / r.tokens_kept
            bits.append(bpt)
            info.append(r.info_bits / r.tokens_kept)
            marg.append(float(unigram[k][toks.ravel()].mean()))
            per_image.setdefault(f.stem, {})[k] = {"bits_per_token": bpt, "saving_vs_log2k": 1 - bpt / np.log2(k),
                                                   "marginal_bits": marg[-1], "bytes": len(r.data)}
            a["counts"].clear()
        summary[k] = {"bits_per_token": mean(bits), "log2k": float(np.log2(k)),
                      "saving_vs_uniform": 1 - mean(bits) / np.log2(k),
                      "marginal_bits": mean(marg), "saving_vs_marginal": 1 - mean(bits) / mean(marg),
                      "model_bits": mean(info), "coder_overhead": mean(bits) / mean(info) - 1,
                      "encode_seconds": statistics.median(times)}
    w, h = load_image(files[0]).size
    summary["passes_first_image"] = n_stages(2 * -(-h // 32), 2 * -(-w // 32))
    return {"summary": summary, "per_image": per_image}


class Scorer:
    """Decode files at temperature 0 and 1 and score them; identical files are scored once."""

    def __init__(self, codec: Codec, ssim2: bool, temperatures=(0.0, 1.0), realism: float = 0.0):
        self.codec, self.temperatures, self.memo, self.realism = codec, temperatures, {}, realism
        self.ssim2 = None
        if ssim2:
            from .metrics import ssimulacra2_score
            self.ssim2 = ssimulacra2_score

    def __call__(self, img, data: bytes) -> dict:
        if data not in self.memo:
            row = {}
            for t in self.temperatures:
                t0 = time.perf_counter()
                out = self.codec.decode(data, seed=1, temperature=t, realism=self.realism)
                row[f"decode_seconds_t{t:g}"] = time.perf_counter() - t0
                for name, v in compare(img, out).items():
                    row[f"{name}_t{t:g}"] = v
                if self.ssim2:
                    row[f"ssimulacra2_t{t:g}"] = self.ssim2(img, out)
            self.memo[data] = row
        return dict(self.memo[data])


def _setting_row(r, w: int, h: int) -> dict:
    return {"bpp": 8 * len(r.data) / (w * h), "bytes": len(r.data), "K": r.setting.codebook,
            "mode": r.setting.mode, "quantile": r.setting.quantile, "kept": r.tokens_kept / r.tokens_total}


def _summary(rows: list[dict], unreachable: int) -> dict:
    out = {key: mean([r[key] for r in rows]) for key in rows[0]
           if isinstance(rows[0][key], (int, float)) and not isinstance(rows[0][key], bool)} if rows else {}
    out["n"], out["unreachable"] = len(rows), unreachable
    return out


def eval_rate(codec: Codec, files, targets, temperatures=(0.0, 1.0), ssim2: bool = False) -> dict:
    """Rate control at each target (whole encode timed), decoded at each temperature."""
    score = Scorer(codec, ssim2, temperatures)
    per_image, rows = {}, {t: [] for t in targets}
    for f in files:
        img = load_image(f)
        w, h = img.size
        score.memo.clear()
        for bpp in targets:
            t0 = time.perf_counter()
            try:
                r = codec.encode(img, bpp)
            except Exception as e:  # unreachable target: record it
                per_image.setdefault(f.stem, {})[bpp] = {"error": str(e)}
                continue
            row = _setting_row(r, w, h) | {"encode_seconds": time.perf_counter() - t0} | score(img, r.data)
            per_image.setdefault(f.stem, {})[bpp] = row
            rows[bpp].append(row)
    summary = {t: _summary(v, len(files) - len(v)) for t, v in rows.items() if v}
    return {"summary": summary, "per_image": per_image}


def eval_realism(codec: Codec, files, targets, realisms, ssim2: bool) -> dict:
    """Per target: one rate-controlled file per image, decoded at every realism value."""
    ssim2_fn = None
    if ssim2:
        from .metrics import ssimulacra2_score as ssim2_fn
    per_image, rows = {}, {(t, r): [] for t in targets for r in realisms}
    for f in files:
        img = load_image(f)
        w, h = img.size
        for bpp in targets:
            try:
                res = codec.encode(img, bpp)
            except CodecError as e:
                per_image.setdefault(f.stem, {})[str(bpp)] = {"error": str(e)}
                continue
            for r in realisms:
                t0 = time.perf_counter()
                out = codec.decode(res.data, seed=1, temperature=0.0, realism=r)
                row = _setting_row(res, w, h) | {"decode_seconds": time.perf_counter() - t0} | compare(img, out)
                if ssim2_fn:
                    row["ssimulacra2"] = ssim2_fn(img, out)
                ba = butteraugli_score(img, out)
                if ba is not None:
                    row["butteraugli"] = ba
                per_image.setdefault(f.stem, {})[f"{bpp}@{r:g}"] = row
                rows[(bpp, r)].append(row)
            print(f"{f.stem} {bpp}: " + " ".join(
                f"r={r:g} {per_image[f.stem][f'{bpp}@{r:g}']['psnr']:.2f}dB "
                f"hf {per_image[f.stem][f'{bpp}@{r:g}']['hf_ratio']:.3f}" for r in realisms), flush=True)
    summary = {}
    for (t, r), v in rows.items():
        if v:
            sm = _summary(v, len(files) - len(v))
            sm["hf_ratio_median"] = float(statistics.median(x["hf_ratio"] for x in v))
            summary[f"{t}@{r:g}"] = sm
    return {"summary": summary, "per_image": per_image}


def eval_modes(codec: Codec, files, targets, modes, ssim2: bool) -> dict:
    """Per mode and target: rate control within that mode, on one analysis per image."""
    score = Scorer(codec, ssim2)
    rows = {m: {t: [] for t in targets} for m in modes}
    missed = {m: {t: 0 for t in targets} for m in modes}
    per_image = {}
    for f in files:
        img = load_image(f)
        w, h = img.size
        a = codec.analyse(img)
        score.memo.clear()
        for m in modes:
            for t in targets:
                try:
                    r = codec.encode_analysed(a, int(np.floor(t * w * h / 8)), mode=m)
                except CodecError:
                    missed[m][t] += 1
                    continue
                row = _setting_row(r, w, h) | score(img, r.data)
                rows[m][t].append(row)
                per_image.setdefault(f.stem, {}).setdefault(m, {})[t] = row
        print(f"modes: {f.stem} done", flush=True)
    summary = {m: {t: _summary(rows[m][t], missed[m][t]) for t in targets} for m in modes}
    return {"summary": summary, "per_image": per_image}


def edge_figure(codec: Codec, f: Path, k: int, out: Path) -> None:
    """Original, checkerboard and edge_more at no more bytes (K fixed), temperature 0 and 1."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    img = load_image(f)
    a = codec.analyse(img)
    cb = codec.encode_setting(a, Setting(k, "checkerboard"))
    em = codec.encode_analysed(a, len(cb.data), codebook=k, mode="edge_more")
    w, h = img.size
    panels = [("original", img)]
    for name, r in (("checkerboard", cb), (f"edge_more q={em.setting.quantile:.2f}", em)):
        for t in (0.0, 1.0):
            panels.append((f"{name}, {len(r.data)} B, t={t:g}", codec.decode(r.data, seed=1, temperature=t)))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (title, im) in zip(axes, panels):
        ax.imshow(np.asarray(im))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{f.stem}, K={k}: the same bytes spent uniformly or on edges", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def eval_edge(codec: Codec, files, ssim2: bool) -> dict:
    """Checkerboard against edge_more at no more bytes, per K, same images."""
    score = Scorer(codec, ssim2)
    rows = {k: {"checkerboard": [], "edge_more": []} for k in codec.model.codebooks}
    for f in files:
        img = load_image(f)
        w, h = img.size
        a = codec.analyse(img)
        score.memo.clear()
        for k in codec.model.codebooks:
            cb = codec.encode_setting(a, Setting(k, "checkerboard"))
            em = codec.encode_analysed(a, len(cb.data), codebook=k, mode="edge_more")
            for name, r in (("checkerboard", cb), ("edge_more", em)):
                rows[k][name].append(_setting_row(r, w, h) | score(img, r.data))
        print(f"edge: {f.stem} done", flush=True)
    return {"summary": {k: {m: _summary(v, 0) for m, v in d.items()} for k, d in rows.items()}}


def eval_edge_choice(codec: Codec, files, ssim2: bool, ks=(256, 1024), quantile: float = 0.5) -> dict:
    """Mode edge at a fixed K and edge share, with the extra blocks chosen by edge strength
    (what tokc does) or at random (same count, seeded): does choosing edges pay?"""
    score = Scorer(codec, ssim2)
    rng = np.random.default_rng(0)
    rows = {k: {"edge blocks": [], "random blocks": []} for k in ks if k in codec.model.codebooks}
    for f in files:
        img = load_image(f)
        w, h = img.size
        a = codec.analyse(img)
        rand = dict(a, strength=rng.random(a["strength"].shape), counts={}, estimates={})
        score.memo.clear()
        for k in rows:
            for name, an in (("edge blocks", a), ("random blocks", rand)):
                r = codec.encode_setting(an, Setting(k, "edge", quantile))
                rows[k][name].append(_setting_row(r, w, h) | score(img, r.data))
        print(f"edge choice: {f.stem} done", flush=True)
    return {"quantile": quantile,
            "summary": {k: {m: _summary(v, 0) for m, v in d.items()} for k, d in rows.items()}}


def markdown(result: dict) -> str:
    """Tables of a result dict, as they appear in weights/README.md."""
    out = [f"Model `{result['model_id']}`, {len(result['images'])} images.", ""]
    if "tokenizer" in result:
        out += ["Tokenizer, every token kept (`--mode entire`):", "",
                "| K | PSNR dB | MS-SSIM | codes used (Kodak + train sample) | perplexity |", "|---|---|---|---|---|"]
        for k, v in sorted(result["tokenizer"]["summary"].items(), key=lambda kv: -int(kv[0])):
            out.append(f"| {k} | {v['psnr']:.2f} | {v['ms_ssim']:.4f} | {100 * v['codes_used']:.1f}% | {v['perplexity']:.0f} |")
        out.append("")
    if "prior" in result:
        out += ["Prior, `--mode entire` (bits per kept token from the real file):", "",
                "| K | log2 K | marginal (train unigram) | model information | real file | saving vs log2 K | "
                "saving vs marginal | coder overhead | encode s (median) |", "|---|---|---|---|---|---|---|---|---|"]
        for k, v in sorted(((k, v) for k, v in result["prior"]["summary"].items() if isinstance(v, dict)),
                           key=lambda kv: -int(kv[0])):
            out.append(f"| {k} | {v['log2k']:.0f} | {v['marginal_bits']:.3f} | {v['model_bits']:.3f} | "
                       f"{v['bits_per_token']:.3f} | {100 * v['saving_vs_uniform']:.1f}% | "
                       f"{100 * v['saving_vs_marginal']:.1f}% | {100 * v['coder_overhead']:.2f}% | {v['encode_seconds']:.1f} |")
        out.append("")
    if "rate" in result:
        out += ["Rate control (`--bpp`), decoded at temperature 0 and 1 (seed 1):", "",
                "| target bpp | real bpp | PSNR t=0 | MS-SSIM t=0 | PSNR t=1 | MS-SSIM t=1 | kept share | encode s | decode s |",
                "|---|---|---|---|---|---|---|---|---|"]
        for t, v in sorted(result["rate"]["summary"].items(), key=lambda kv: float(kv[0])):
            out.append(f"| {t} | {v['bpp']:.4f} | {v['psnr_t0']:.2f} | {v['ms_ssim_t0']:.4f} | {v['psnr_t1']:.2f} | "
                       f"{v['ms_ssim_t1']:.4f} | {v['kept']:.2f} | {v['encode_seconds']:.1f} | {v['decode_seconds_t0']:.1f} |")
    if "realism" in result:
        out += ["", "Realism (rate control at each target, one file per image, decoded at temperature 0, "
                "seed 1, at each realism r); HF ratio = fine-detail energy of the decoded image over "
                "the original's (median over images; 1.0 = as much detail as the original):", "",
                "| target bpp | r | real bpp | PSNR dB | MS-SSIM | SSIMULACRA2 | butteraugli | HF ratio (median) | n |",
                "|---|---|---|---|---|---|---|---|---|"]
        for key, v in sorted(result["realism"]["summary"].items(),
                             key=lambda kv: tuple(map(float, kv[0].split("@")))):
            t, r = key.split("@")
            ba = f"{v['butteraugli']:.2f}" if v.get("butteraugli") == v.get("butteraugli") and "butteraugli" in v else "n/a"
            out.append(f"| {t} | {r} | {v['bpp']:.4f} | {v['psnr']:.2f} | {v['ms_ssim']:.4f} | "
                       f"{_fmt(v, 'ssimulacra2')} | {ba} | {v['hf_ratio_median']:.3f} | {v['n']} |")
    if "modes" in result:
        out += ["", "Rate control restricted to one mask mode (K and edge-block share chosen by rate "
                "control), decoded at temperature 0 and 1 (seed 1); `n` images reach the target, "
                "`miss` cannot:", "",
                "| mode | target bpp | real bpp | K (mean) | kept share | PSNR t=0 | MS-SSIM t=0 | SSIMULACRA2 t=0 | "
                "PSNR t=1 | MS-SSIM t=1 | SSIMULACRA2 t=1 | n | miss |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for m, res in result["modes"]["summary"].items():
            for t, v in sorted(res.items(), key=lambda kv: float(kv[0])):
                if not v.get("n"):
                    out.append(f"| {m} | {t} | unreachable | | | | | | | | | 0 | {v['unreachable']} |")
                    continue
                out.append(f"| {m} | {t} | {v['bpp']:.4f} | {v['K']:.0f} | {v['kept']:.2f} | " + " | ".join(
                    _fmt(v, f"{name}_t{tt}") for tt in ("0", "1") for name in ("psnr", "ms_ssim", "ssimulacra2"))
                    + f" | {v['n']} | {v['unreachable']} |")
    if "edge" in result:
        out += ["", "Edge preservation at equal rate: per K, plain checkerboard (half the tokens, "
                "uniformly) against edge_more (stage 0 plus edge blocks) at the largest edge share "
                "whose file is no bigger; temperature 0 and 1:", ""]
        out += _per_k_table(result["edge"]["summary"], "mask")
    if "edge_choice" in result:
        q = result["edge_choice"]["quantile"]
        out += ["", f"Choosing the blocks: mode edge with a {q:.0%} block share, blocks chosen by edge "
                "strength or at random (same count; any block map is a valid file):", ""]
        out += _per_k_table(result["edge_choice"]["summary"], "blocks")
    return "\n".join(out) + "\n"


def _per_k_table(summary: dict, what: str) -> list[str]:
    out = [f"| K | {what} | real bpp | kept share | PSNR t=0 | MS-SSIM t=0 | SSIMULACRA2 t=0 | "
           "PSNR t=1 | MS-SSIM t=1 | SSIMULACRA2 t=1 | n |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, d in sorted(summary.items(), key=lambda kv: int(kv[0])):
        for m, v in d.items():
            out.append(f"| {k} | {m} | {v['bpp']:.4f} | {v['kept']:.2f} | " + " | ".join(
                _fmt(v, f"{name}_t{tt}") for tt in ("0", "1") for name in ("psnr", "ms_ssim", "ssimulacra2"))
                + f" | {v['n']} |")
    return out


def _fmt(v: dict, key: str) -> str:
    x = v.get(key)
    if x is None or x != x:
        return "n/a"
    return f"{x:.4f}" if key.startswith("ms_ssim") else (f"{x:.1f}" if key.startswith("ssimulacra2") else f"{x:.2f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tokcodec.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/kodak")
    ap.add_argument("--train-data", default=None, help="training photos for the marginal baseline "
                    "and codebook usage (default: DATA/../train)")
    ap.add_argument("--train-sample", type=int, default=200)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--sections", default="tokenizer,prior,rate")
    ap.add_argument("--images", default=None, help="comma-separated stems, e.g. kodim01,kodim23")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--targets", default=",".join(map(str, TARGETS)))
    ap.add_argument("--modes", default=None, help="modes section: which mask modes "
                    "(default entire,edge,edge_more,checkerboard)")
    ap.add_argument("--ssimulacra2", action="store_true", help="also compute SSIMULACRA2 (slow)")
    ap.add_argument("--realism", default="0,0.5,1", help="realism section: decoder realism values")
    ap.add_argument("--decoder", default=None, help="score the EMA decoder of a realism training "
                    "checkpoint (runs/realism/last.pt) instead of the shipped decoder")
    ap.add_argument("--figure", default=None, help="edge section: also draw kodim23 (or the first "
                    "image) at K=256 to this PNG")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None, help="also write the tables to this file")
    args = ap.parse_args(argv)
    data = Path(args.data)
    if not data.exists():
        raise SystemExit(f"error: {data} not found; pass --data DIR")
    torch.set_grad_enabled(False)
    codec = Codec(args.weights, "auto")
    if args.decoder:
        from .train.realism import use_checkpoint
        use_checkpoint(codec.model, Path(args.decoder))
    files = images(data, args.images.split(",") if args.images else None, args.limit)
    sections = args.sections.split(",")
    result = {"model_id": codec.model.model_id.hex(), "images": [f.stem for f in files]}
    train = Path(args.train_data) if args.train_data else data.parent / "train"
    if {"tokenizer", "prior"} & set(sections) and not train.exists():
        raise SystemExit(f"error: training photos {train} not found (needed for the marginal baseline); "
                         "pass --train-data DIR")
    unigram, train_counts = unigram_bits(codec, train, args.train_sample) \
        if {"tokenizer", "prior"} & set(sections) else ({}, {})
    if "tokenizer" in sections:
        result["tokenizer"] = eval_tokenizer(codec, files, train_counts)
        print(json.dumps(result["tokenizer"]["summary"], indent=1), flush=True)
    if "prior" in sections:
        result["prior"] = eval_prior(codec, files, unigram)
        print(json.dumps(result["prior"]["summary"], indent=1), flush=True)
    targets = [float(t) for t in args.targets.split(",")]
    if "modes" in sections:
        modes = args.modes.split(",") if args.modes else ["entire", "edge", "edge_more", "checkerboard"]
        result["modes"] = eval_modes(codec, files, targets, modes, args.ssimulacra2)
    if "edge" in sections:
        result["edge"] = eval_edge(codec, files, args.ssimulacra2)
        if args.figure:
            pick = next((f for f in files if f.stem == "kodim23"), files[0])
            edge_figure(codec, pick, 256 if 256 in codec.model.codebooks else codec.model.codebooks[0],
                        Path(args.figure))
    if "edgechoice" in sections:
        result["edge_choice"] = eval_edge_choice(codec, files, args.ssimulacra2)
    if "realism" in sections:
        result["realism"] = eval_realism(codec, files, targets, [float(r) for r in args.realism.split(",")],
                                         args.ssimulacra2)
    if "rate" in sections:
        result["rate"] = eval_rate(codec, files, targets, ssim2=args.ssimulacra2)
        print(json.dumps(result["rate"]["summary"], indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
