"""Train the f=16 VQ tokenizer, then derive its codebook ladder.

    python -m tokcodec.train tokenizer --data DIR --out runs/tok [--resume] [--minutes N]
    python -m tokcodec.train ladder --ckpt runs/tok/last.pt --data DIR --out runs/tok

`tokenizer` trains encoder, decoder and the largest codebook (EMA k-means updates with
dead-code restarts; L2 + L1 + MS-SSIM, optionally a hinge patch discriminator after a warm-up).
`ladder` derives each smaller codebook by k-means of the large one (weighted by usage) and
fine-tunes it on reconstruction with encoder and decoder frozen (the UIGC / Mao et al. recipe).
Multi-GPU: `torchrun --nproc_per_node N -m tokcodec.train tokenizer ...`.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import ms_ssim
from ..tokenizer import Tokenizer, TokenizerConfig, VQState, l2norm, vq_train_step
from .common import Progress, load_checkpoint, save_checkpoint, setup, unwrap
from .data import CropSampler


class PatchDiscriminator(nn.Module):
    """A small PatchGAN: strided convolutions to a map of real/fake logits."""

    def __init__(self, ch: int = 64):
        super().__init__()
        layers, c = [], 3
        for i, co in enumerate((ch, ch * 2, ch * 4)):
            layers += [nn.Conv2d(c, co, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c = co
        layers += [nn.Conv2d(c, 1, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x * 2 - 1)


def recon_loss(x: torch.Tensor, y: torch.Tensor, msssim_w: float) -> torch.Tensor:
    loss = F.mse_loss(y, x) + 0.1 * F.l1_loss(y, x)
    if msssim_w:
        loss = loss + msssim_w * (1 - ms_ssim(y.float(), x.float(), scales=3).mean())
    return loss


def train_tokenizer(args) -> None:
    rt = setup(args.device, args.seed)
    out = Path(args.out)
    ckpt_path = out / "last.pt"
    cfg = TokenizerConfig()
    model = Tokenizer(cfg).to(rt.device)
    k = max(cfg.codebooks)
    vq = VQState(k, cfg.code_dim)
    params = list(model.encoder.parameters()) + list(model.decoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    disc = PatchDiscriminator().to(rt.device) if args.gan_weight > 0 else None
    dopt = torch.optim.AdamW(disc.parameters(), lr=args.lr, betas=(0.5, 0.9)) if disc else None
    step = 0
    if args.resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        vq.usage, vq.sums = ck["vq_usage"], ck["vq_sums"]
        step = ck["step"]
        if disc is not None and "disc" in ck:
            disc.load_state_dict(ck["disc"])
            dopt.load_state_dict(ck["dopt"])
        if rt.main:
            print(f"resumed from {ckpt_path} at step {step}", flush=True)
    for g in opt.param_groups:
        g["lr"] = args.lr
    ddp_model = model
    if rt.world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)
    data = CropSampler(Path(args.data), args.crop, args.seed + step, rt.rank, rt.world, args.limit)
    if rt.main:
        n_par = sum(p.numel() for p in params)
        print(f"tokenizer: {n_par / 1e6:.2f}M params, {len(data.images)} images, crop {args.crop}, "
              f"batch {args.batch}, device {rt.device}", flush=True)
    gen = torch.Generator().manual_seed(args.seed + step)
    prog = Progress(rt, args.log_every)
    t_end = time.time() + args.minutes * 60 if args.minutes else math.inf
    last_save = time.time()
    if step == 0:
        with torch.no_grad():  # initialise the codebook from encoder outputs
            z = model.encode_latent(data.batch(64).to(rt.device))
            flat = z.permute(0, 2, 3, 1).reshape(-1, cfg.code_dim)
            pick = torch.randint(0, flat.shape[0], (k,), generator=gen)
            model.codebook(k).copy_(flat[pick.to(flat.device)])
            vq.sums = flat[pick.to(flat.device)].cpu().clone()
    while step < args.steps and time.time() < t_end:
        x = data.batch(args.batch).to(rt.device, non_blocking=True)
        warm = min(1.0, (step + 1) / 200)
        for g in opt.param_groups:
            g["lr"] = args.lr * warm
        with rt.autocast:
            z = l2norm(unwrap(ddp_model).encoder(x) if rt.world == 1 else ddp_model.module.encoder(x), 1)
        zq, commit, st = vq_train_step(model, z.float(), k, vq, restart=step % 10 == 0, gen=gen)
        with rt.autocast:
            y = model.decoder(zq)
            rec = recon_loss(x, y.float(), args.msssim_weight)
            loss = rec + 0.25 * commit
            use_gan = disc is not None and step >= args.gan_start
            if use_gan:
                g_loss = -disc(y).mean()
                loss = loss + args.gan_weight * g_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if use_gan:
            with rt.autocast:
                d_loss = F.relu(1 - disc(x)).mean() + F.relu(1 + disc(y.detach())).mean()
            dopt.zero_grad(set_to_none=True)
            d_loss.backward()
            dopt.step()
        step += 1
        with torch.no_grad():
            mse = F.mse_loss(y.float().clamp(0, 1), x)
        prog.update(step, x.shape[0] * rt.world, loss=float(loss), psnr=float(-10 * torch.log10(mse)),
                    perplexity=st["perplexity"], used=st["used"], restarts=st["restarts"])
        if time.time() - last_save > args.save_minutes * 60 and rt.main:
            _save(ckpt_path, model, opt, vq, step, disc, dopt)
            last_save = time.time()
    if rt.main:
        _save(ckpt_path, model, opt, vq, step, disc, dopt)
        print(f"saved {ckpt_path} at step {step}", flush=True)


def _save(path, model, opt, vq, step, disc, dopt):
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "vq_usage": vq.usage,
             "vq_sums": vq.sums, "step": step, "config": model.cfg.to_dict()}
    if disc is not None:
        state["disc"], state["dopt"] = disc.state_dict(), dopt.state_dict()
    save_checkpoint(path, state)


def kmeans(x: torch.Tensor, w: torch.Tensor, k: int, iters: int, seed: int) -> torch.Tensor:
    """Weighted spherical k-means of unit vectors x (N,D) with weights w (N,) -> (k,D)."""
    g = torch.Generator().manual_seed(seed)
    c = x[torch.multinomial(w + 1e-9, k, replacement=False, generator=g)].clone()
    for _ in range(iters):
        a = (x @ c.t()).argmax(1)
        s = torch.zeros_like(c).index_add_(0, a, x * w[:, None])
        empty = s.norm(dim=1) < 1e-9
        s[empty] = x[torch.randint(0, x.shape[0], (int(empty.sum()),), generator=g)]
        c = l2norm(s, 1)
    return c


def train_ladder(args) -> None:
    rt = setup(args.device, args.seed)
    ck = load_checkpoint(Path(args.ckpt))
    cfg = TokenizerConfig.from_dict(ck["config"])
    model = Tokenizer(cfg).to(rt.device)
    model.load_state_dict(ck["model"])
    model.requires_grad_(False)
    big = max(cfg.codebooks)
    usage = ck["vq_usage"].float()
    data = CropSampler(Path(args.data), args.crop, args.seed, rt.rank, rt.world, args.limit)
    for k in sorted(cfg.codebooks, reverse=True):
        if k == big:
            continue
        init = kmeans(model.codebook(big).cpu(), usage, k, 50, args.seed)
        cb = nn.Parameter(init.to(rt.device))
        opt = torch.optim.Adam([cb], lr=args.lr)
        t0 = time.time()
        for step in range(args.steps):
            x = data.batch(args.batch).to(rt.device)
            with torch.no_grad():
                z = model.encode_latent(x)
            unit = l2norm(cb, 1)
            idx = torch.einsum("bdhw,kd->bkhw", z, unit.detach()).argmax(1)
            y = model.decoder(unit[idx].permute(0, 3, 1, 2))
            loss = recon_loss(x, y, args.msssim_weight) + 0.25 * F.mse_loss(unit[idx].permute(0, 3, 1, 2), z)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if rt.main and (step + 1) % max(1, args.steps // 5) == 0:
                print(f"K={k} step {step + 1} loss {float(loss):.4f} ({time.time() - t0:.0f}s)", flush=True)
        model.codebook(k).copy_(l2norm(cb.detach(), 1))
    if rt.main:
        ck["model"] = model.state_dict()
        ck["ladder_steps"] = args.steps
        save_checkpoint(Path(args.out) / "ladder.pt", ck)
        print(f"saved {Path(args.out) / 'ladder.pt'}", flush=True)


def add_args(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="train encoder, decoder and the large codebook")
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="runs/tokenizer")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--steps", type=int, default=10 ** 9)
    p.add_argument("--minutes", type=float, default=0, help="stop after this wall time (0 = no limit)")
    p.add_argument("--msssim-weight", type=float, default=0.05)
    p.add_argument("--gan-weight", type=float, default=0.0, help="hinge patch discriminator weight (0 = off)")
    p.add_argument("--gan-start", type=int, default=5000)
    p.add_argument("--save-minutes", type=float, default=5)
    p.add_argument("--log-every", type=float, default=60)
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=train_tokenizer)

    q = sub.add_parser("ladder", help="derive and fine-tune the smaller codebooks (encoder/decoder frozen)")
    q.add_argument("--ckpt", required=True)
    q.add_argument("--data", required=True)
    q.add_argument("--out", default="runs/tokenizer")
    q.add_argument("--crop", type=int, default=128)
    q.add_argument("--batch", type=int, default=16)
    q.add_argument("--lr", type=float, default=1e-3)
    q.add_argument("--steps", type=int, default=150)
    q.add_argument("--msssim-weight", type=float, default=0.05)
    q.add_argument("--limit", type=int, default=None)
    q.add_argument("--device", default="auto")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=train_ladder)
