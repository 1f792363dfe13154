"""Train the multi-stage transformer prior on precomputed token grids, and export weights.

    python -m tokcodec.train tokens --ckpt runs/tok/ladder.pt --data DIR --out runs/tokens.pt
    python -m tokcodec.train prior --tokens runs/tokens.pt --out runs/prior [--resume] [--minutes N]
    python -m tokcodec.train export --tokenizer runs/tok/ladder.pt --prior runs/prior/last.pt \\
        --out weights/tokc.safetensors

Masked-context training matches both uses of the prior:
  * coding: predict stage s from stages < s, where some earlier tokens were dropped by the
    mask (whole 2x2 blocks outside UIGC's stage 0, as the edge modes drop them);
  * generation: predict stage s from complete earlier stages.
Each sample draws the base stride of the schedule from {2, 4, 8, 16}, so small training crops
cover every level of the stage pyramid that large images use.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import schedule
from ..codec import pad_image
from ..prior import ExactPrior, Prior, PriorConfig, quantize
from ..tokenizer import Tokenizer, TokenizerConfig
from .common import Progress, load_checkpoint, save_checkpoint, setup
from .data import list_images, load_rgb

BASES = (2, 4, 8, 16)


@torch.no_grad()
def make_tokens(args) -> None:
    rt = setup(args.device, 0)
    ck = load_checkpoint(Path(args.ckpt))
    tok = Tokenizer(TokenizerConfig.from_dict(ck["config"])).to(rt.device)
    tok.load_state_dict(ck["model"])
    tok.eval()
    files = list_images(Path(args.data))
    if args.limit:
        files = files[:args.limit]
    grids = {k: [] for k in tok.cfg.codebooks}
    t0 = time.time()
    for n, f in enumerate(files):
        rgb = load_rgb(f, 32)
        if rgb is None:
            continue
        for arr in (rgb, rgb[:, ::-1]):
            x = torch.from_numpy(np.array(pad_image(arr))).permute(2, 0, 1)[None]
            z = tok.encode_latent(x.float().div(255).to(rt.device))
            for k in tok.cfg.codebooks:
                grids[k].append(tok.quantize(z, k)[0].cpu().to(torch.int16))
        if (n + 1) % 500 == 0:
            print(f"{n + 1}/{len(files)} images ({time.time() - t0:.0f}s)", flush=True)
    torch.save({"grids": grids, "files": [str(f) for f in files]}, args.out)
    print(f"saved {args.out}: {len(grids[max(grids)])} grids per K", flush=True)


class StageBatches:
    """Random crops of token grids with a random stage, base stride and block drops."""

    def __init__(self, grids: dict[int, list[torch.Tensor]], crop: int, seed: int):
        self.grids = {k: [g for g in v if min(g.shape) >= crop] for k, v in grids.items()}
        self.crop = crop
        self.rng = np.random.default_rng(seed)
        self.uigc = schedule.uigc_stage(crop, crop)

    def batch(self, k: int, n: int, drop_prob: float = 0.5):
        c, rng = self.crop, self.rng
        toks = np.empty((n, c, c), dtype=np.int64)
        inp = np.empty((n, c, c), dtype=np.int64)
        target = np.zeros((n, c, c), dtype=bool)
        pool = self.grids[k]
        for i in range(n):
            g = pool[rng.integers(len(pool))]
            y = rng.integers(g.shape[0] - c + 1)
            x = rng.integers(g.shape[1] - c + 1)
            t = g[y:y + c, x:x + c].numpy().astype(np.int64)
            toks[i] = t
            ids = schedule.stage_ids(c, c, int(rng.choice(BASES)))
            ns = int(ids.max()) + 1
            sizes = np.bincount(ids.ravel(), minlength=ns).astype(np.float64) + 8
            s = int(rng.choice(ns, p=sizes / sizes.sum()))
            visible = ids < s
            if rng.random() < drop_prob:
                blocks = rng.random((c // 2, c // 2)) < rng.random()
                dropped = np.repeat(np.repeat(blocks, 2, 0), 2, 1) & (self.uigc > 0)
                visible &= ~dropped
            inp[i] = np.where(visible, t, k)
            target[i] = ids == s
        return torch.from_numpy(inp), torch.from_numpy(toks), torch.from_numpy(target)


def _split(grids, holdout: int):
    train = {k: v[:-holdout] for k, v in grids.items()}
    val = {k: v[-holdout:] for k, v in grids.items()}
    return train, val


@torch.no_grad()
def validate(model: Prior, val: StageBatches, device, n: int = 4, batch: int = 32) -> dict[int, float]:
    model.eval()
    out = {}
    for k in model.cfg.codebooks:
        bits = []
        for _ in range(n):
            inp, toks, tgt = val.batch(k, batch)
            tgt = tgt.to(device)
            logits = model(inp.to(device), k, tgt)
            ce = F.cross_entropy(logits.float(), toks.to(device)[tgt])
            bits.append(ce.item() / math.log(2))
        out[k] = float(np.mean(bits))
    model.train()
    return out


def train_prior(args) -> None:
    rt = setup(args.device, args.seed)
    data = torch.load(args.tokens, weights_only=False)
    train, val = _split(data["grids"], args.holdout)
    cfg = PriorConfig()
    model = Prior(cfg).to(rt.device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    out = Path(args.out)
    ckpt = out / "last.pt"
    step, elapsed = 0, 0.0
    if args.resume and ckpt.exists():
        ck = load_checkpoint(ckpt)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, elapsed = ck["step"], ck.get("elapsed", 0.0)
        print(f"resumed at step {step}", flush=True)
    ddp = model
    if rt.world > 1:
        ddp = nn.parallel.DistributedDataParallel(  # per-K heads sit idle in other K's steps
            model, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None,
            find_unused_parameters=True)
    batches = StageBatches(train, args.crop, args.seed + step + 1000 * rt.rank)
    vbatches = StageBatches(val, args.crop, 12345)
    if rt.main:
        print(f"prior: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
              f"{len(train[max(train)])} train grids, device {rt.device}", flush=True)
    ks = list(cfg.codebooks)
    prog = Progress(rt, args.log_every)
    t_start, last_save = time.time(), time.time()
    budget = args.minutes * 60 if args.minutes else math.inf
    while time.time() - t_start + elapsed < budget and step < args.steps:
        frac = (time.time() - t_start + elapsed) / budget if budget < math.inf else 0.0
        lr = args.lr * min(1.0, (step + 1) / 200) * (0.5 * (1 + math.cos(math.pi * min(frac, 1.0))) * 0.9 + 0.1)
        for g in opt.param_groups:
            g["lr"] = lr
        k = ks[step % len(ks)]
        inp, toks, tgt = batches.batch(k, args.batch)
        inp, toks, tgt = inp.to(rt.device), toks.to(rt.device), tgt.to(rt.device)
        with rt.autocast:
            logits = ddp(inp, k, tgt)
        loss = F.cross_entropy(logits.float(), toks[tgt])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        prog.update(step, args.batch * rt.world, **{f"bits{k}": float(loss) / math.log(2)})
        if rt.main and time.time() - last_save > args.save_minutes * 60:
            v = validate(model, vbatches, rt.device)
            print("val bits/token " + " ".join(f"K={k}: {b:.3f} ({b / math.log2(k):.3f} of log2 K)" for k, b in v.items()), flush=True)
            save_checkpoint(ckpt, {"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                                   "elapsed": time.time() - t_start + elapsed, "config": cfg.to_dict()})
            last_save = time.time()
    if rt.main:
        save_checkpoint(ckpt, {"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                               "elapsed": time.time() - t_start + elapsed, "config": cfg.to_dict()})
        v = validate(model, vbatches, rt.device)
        print("final val bits/token " + " ".join(f"K={k}: {b:.3f}" for k, b in v.items()), flush=True)
        print(f"saved {ckpt} at step {step}", flush=True)


def export(args) -> None:
    from ..weights import save
    tk = load_checkpoint(Path(args.tokenizer))
    tok = Tokenizer(TokenizerConfig.from_dict(tk["config"]))
    tok.load_state_dict(tk["model"])
    pk = load_checkpoint(Path(args.prior))
    pcfg = PriorConfig.from_dict(pk["config"])
    prior = Prior(pcfg)
    prior.load_state_dict(pk["model"])
    provenance = {"tokenizer_steps": tk.get("step"), "ladder_steps": tk.get("ladder_steps"),
                  "prior_steps": pk.get("step"), "prior_seconds": round(pk.get("elapsed", 0)),
                  "data": args.data_note, "device": args.device_note}
    mid = save(args.out, tok, quantize(prior), pcfg, provenance)
    print(f"wrote {args.out}: model id {mid.hex()}", flush=True)
    ExactPrior(pcfg, quantize(prior))  # sanity: the exact model builds


def add_args(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("tokens", help="precompute token grids of a folder for every codebook")
    t.add_argument("--ckpt", required=True)
    t.add_argument("--data", required=True)
    t.add_argument("--out", default="runs/tokens.pt")
    t.add_argument("--limit", type=int, default=None)
    t.add_argument("--device", default="auto")
    t.set_defaults(func=make_tokens)

    p = sub.add_parser("prior", help="train the multi-stage transformer prior")
    p.add_argument("--tokens", required=True)
    p.add_argument("--out", default="runs/prior")
    p.add_argument("--crop", type=int, default=16, help="token crop side")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=10 ** 9)
    p.add_argument("--minutes", type=float, default=0, help="time budget; the lr follows a cosine over it")
    p.add_argument("--holdout", type=int, default=100, help="grids kept for validation")
    p.add_argument("--save-minutes", type=float, default=5)
    p.add_argument("--log-every", type=float, default=60)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=train_prior)

    e = sub.add_parser("export", help="write the shipped safetensors file")
    e.add_argument("--tokenizer", required=True)
    e.add_argument("--prior", required=True)
    e.add_argument("--out", default="weights/tokc.safetensors")
    e.add_argument("--data-note", default="../shared/data/train (3,818 photos; Kodak never used)")
    e.add_argument("--device-note", default="CPU, 2 cores")
    e.set_defaults(func=export)
