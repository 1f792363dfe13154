"""Train the realism-conditioned decoder (multi-realism, HiFiC-style adversarial fine-tuning).

    python -m tokcodec.train realism --weights weights --data DIR --out runs/realism [--resume]

Starts from the shipped tokenizer; the encoder, the codebooks and the prior stay frozen, so
every existing .tkc file stays valid. Each training image gets its own realism r (0 with
probability --p-zero, otherwise uniform in [0, 1]); the decoder's loss per image is

    distortion (MSE + 0.1 L1 + 0.05 (1 - MS-SSIM), as the fidelity decoder was trained)
    + r * lambda * (hinge adversarial loss + fm_weight * discriminator feature matching)

`lambda` balances the two gradients at the decoder's last layer (the VQGAN adaptive weight,
smoothed by an EMA) times --gan-factor, so no hand-tuned scale between pixel and GAN losses is
needed. The discriminator sees the image at two scales and is conditioned on the tokens' code
vectors (upsampled), as in HiFiC; spectral norm on every convolution, hinge loss. No pretrained
network is used: the discriminator's features are the perceptual loss.

Checkpoints (`last.pt`: decoder, EMA decoder, discriminator, optimisers) every --save-minutes;
`export` writes the EMA decoder into the shipped weights and the discriminator, in fp16, into
weights/train-state/ so a later session can resume adversarial training from the commit.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .. import weights as W
from ..tokenizer import Tokenizer, TokenizerConfig
from .common import Progress, load_checkpoint, save_checkpoint, setup
from .data import CropSampler
from .tokenizer import recon_loss

REALISM_DIM = 64


class DiscScale(nn.Module):
    """One scale: strided convolutions on the image; the code vectors, projected and upsampled,
    join at 1/4 resolution. Returns the logit map and the intermediate features."""

    def __init__(self, code_dim: int, ch: int = 48, cond_ch: int = 32):
        super().__init__()
        self.c1 = spectral_norm(nn.Conv2d(3, ch, 4, stride=2, padding=1))
        self.c2 = spectral_norm(nn.Conv2d(ch, ch * 2, 4, stride=2, padding=1))
        self.cond = spectral_norm(nn.Conv2d(code_dim, cond_ch, 1))
        self.c3 = spectral_norm(nn.Conv2d(ch * 2 + cond_ch, ch * 4, 4, stride=2, padding=1))
        self.c4 = spectral_norm(nn.Conv2d(ch * 4, ch * 4, 3, padding=1))
        self.head = spectral_norm(nn.Conv2d(ch * 4, 1, 3, padding=1))

    def forward(self, x: torch.Tensor, codes: torch.Tensor):
        f1 = F.leaky_relu(self.c1(x * 2 - 1), 0.2)
        f2 = F.leaky_relu(self.c2(f1), 0.2)
        c = F.interpolate(self.cond(codes), size=f2.shape[-2:], mode="nearest")
        f3 = F.leaky_relu(self.c3(torch.cat([f2, c], 1)), 0.2)
        f4 = F.leaky_relu(self.c4(f3), 0.2)
        return self.head(f4), [f1, f2, f3, f4]


class Discriminator(nn.Module):
    """Two scales (full and half resolution), both conditioned on the code vectors."""

    def __init__(self, code_dim: int):
        super().__init__()
        self.scales = nn.ModuleList([DiscScale(code_dim), DiscScale(code_dim)])

    def forward(self, x: torch.Tensor, codes: torch.Tensor):
        outs = []
        for i, d in enumerate(self.scales):
            outs.append(d(x if i == 0 else F.avg_pool2d(x, 2 ** i), codes))
        return outs


def per_image(t: torch.Tensor) -> torch.Tensor:
    return t.float().flatten(1).mean(1)


def distortion(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image version of the tokenizer's reconstruction loss."""
    from ..metrics import ms_ssim
    y = y.float()
    return (per_image((y - x) ** 2) + 0.1 * per_image((y - x).abs())
            + 0.05 * (1 - ms_ssim(y, x, scales=3)))


def load_base(weights_path: str | None) -> tuple[Tokenizer, dict]:
    """The shipped tokenizer, with a realism-conditioned decoder initialised from its decoder."""
    m = W.load(weights_path)
    cfg = TokenizerConfig.from_dict({**m.tokenizer.cfg.to_dict(), "realism_dim": REALISM_DIM})
    tok = Tokenizer(cfg)
    missing, unexpected = tok.load_state_dict(m.tokenizer.state_dict(), strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith("decoder.") and (".film." in k or "noise_scale" in k or "realism." in k)
               for k in missing), missing
    return tok, m.metadata


def train_realism(args) -> None:
    rt = setup(args.device, args.seed)
    torch.set_num_threads(args.threads) if args.threads else None
    out = Path(args.out)
    ckpt = out / "last.pt"
    tok, _ = load_base(args.weights)
    tok.to(rt.device)
    tok.encoder.requires_grad_(False)
    dec = tok.decoder
    ema = copy.deepcopy(dec).requires_grad_(False)
    disc = Discriminator(tok.cfg.code_dim).to(rt.device)
    opt = torch.optim.Adam(dec.parameters(), lr=args.lr, betas=(0.5, 0.9))
    dopt = torch.optim.Adam(disc.parameters(), lr=args.dlr, betas=(0.5, 0.9))
    step, lam_ema = 0, None
    if args.resume and ckpt.exists():
        ck = load_checkpoint(ckpt)
        dec.load_state_dict(ck["decoder"])
        ema.load_state_dict(ck["ema"])
        disc.load_state_dict(ck["disc"])
        opt.load_state_dict(ck["opt"])
        dopt.load_state_dict(ck["dopt"])
        step, lam_ema = ck["step"], ck.get("lam_ema")
        print(f"resumed from {ckpt} at step {step}", flush=True)
    elif args.init_state:  # resume from a committed export: EMA decoder + discriminator
        st = load_state(Path(args.init_state))
        dec.load_state_dict(st["decoder"])
        ema.load_state_dict(st["decoder"])
        disc.load_state_dict(st["disc"], strict=False)
        step, lam_ema = st["step"], st.get("lam_ema")
        print(f"initialised from {args.init_state} at step {step}", flush=True)
    data = CropSampler(Path(args.data), args.crop, args.seed + step, rt.rank, rt.world, args.limit,
                       split="train")
    ks = [int(k) for k in args.codebooks.split(",")]
    gen = torch.Generator().manual_seed(args.seed + step)
    print(f"realism decoder: {sum(p.numel() for p in dec.parameters()) / 1e6:.2f}M params, "
          f"discriminator {sum(p.numel() for p in disc.parameters()) / 1e6:.2f}M, "
          f"{len(data.images)} images, crop {args.crop}, batch {args.batch}, K {ks}, "
          f"device {rt.device}, {torch.get_num_threads()} threads", flush=True)
    amp = (torch.autocast("cpu", dtype=torch.bfloat16) if rt.device.type == "cpu" and args.bf16
           else rt.autocast)
    prog = Progress(rt, args.log_every)
    t_end = time.time() + args.minutes * 60 if args.minutes else math.inf
    last_save = time.time()
    last_layer = dec.out[0].weight
    while step < args.steps and time.time() < t_end:
        x = data.batch(args.batch).to(rt.device)
        k = ks[int(torch.randint(len(ks), (1,), generator=gen))]
        with torch.no_grad(), amp:
            z = tok.encode_latent(x).float()
        codes = tok.embed(tok.quantize(z, k), k)
        r = torch.rand(x.shape[0], generator=gen)
        r[torch.rand(x.shape[0], generator=gen) < args.p_zero] = 0.0
        r = r.to(rt.device)
        with amp:
            y = dec(codes, r)
        gan_on = step >= args.gan_start
        # discriminator step (real vs every fake, whatever its r)
        with amp:
            real = disc(x, codes)
            fake = disc(y.detach().clamp(0, 1), codes)
            d_loss = sum(F.relu(1 - lr_).float().mean() + F.relu(1 + lf).float().mean()
                         for (lr_, _), (lf, _) in zip(real, fake))
        dopt.zero_grad(set_to_none=True)
        d_loss.backward()
        dopt.step()
        # decoder step
        dist = distortion(x, y)
        loss = dist.mean()
        stats = {"dist": float(loss), "d_loss": float(d_loss)}
        if gan_on:
            disc.requires_grad_(False)
            with amp:
                fo = disc(y, codes)
            disc.requires_grad_(True)
            adv = sum(per_image(-lf) for lf, _ in fo)
            fm = sum(per_image((ff.float() - fr.detach().float()).abs())
                     for (_, ffs), (_, frs) in zip(fo, real) for ff, fr in zip(ffs, frs)) / 4
            g = (r * (adv + args.fm_weight * fm)).mean()
            gd = torch.autograd.grad(loss, last_layer, retain_graph=True)[0].norm()
            gg = torch.autograd.grad(g, last_layer, retain_graph=True)[0].norm()
            lam = float((gd / (gg + 1e-6)).clamp(0, 1e4))
            lam_ema = lam if lam_ema is None else 0.98 * lam_ema + 0.02 * lam
            warm = min(1.0, (step - args.gan_start + 1) / args.gan_warmup)
            loss = loss + args.gan_factor * warm * lam_ema * g
            stats.update(adv=float(adv.mean()), fm=float(fm.mean()), lam=lam_ema)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dec.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for pe, pd in zip(ema.parameters(), dec.parameters()):
                pe.lerp_(pd, 1 - args.ema)
            for be, bd in zip(ema.buffers(), dec.buffers()):
                be.copy_(bd)
            z0 = r == 0
            if z0.any():
                mse0 = F.mse_loss(y[z0].float().clamp(0, 1), x[z0])
                stats["psnr_r0"] = float(-10 * torch.log10(mse0))
        step += 1
        prog.update(step, x.shape[0], **stats)
        if time.time() - last_save > args.save_minutes * 60:
            _save(ckpt, dec, ema, disc, opt, dopt, step, lam_ema)
            last_save = time.time()
    _save(ckpt, dec, ema, disc, opt, dopt, step, lam_ema)
    print(f"saved {ckpt} at step {step}", flush=True)


def _save(path, dec, ema, disc, opt, dopt, step, lam_ema):
    save_checkpoint(path, {"decoder": dec.state_dict(), "ema": ema.state_dict(), "disc": disc.state_dict(),
                           "opt": opt.state_dict(), "dopt": dopt.state_dict(), "step": step,
                           "lam_ema": lam_ema})


def use_checkpoint(model: "W.Model", path: Path) -> None:
    """Put the EMA decoder of a training checkpoint into a loaded model (for evaluation)."""
    ck = load_checkpoint(path)
    cfg = TokenizerConfig.from_dict({**model.tokenizer.cfg.to_dict(), "realism_dim": REALISM_DIM})
    tok = Tokenizer(cfg)
    state = {k: v for k, v in model.tokenizer.state_dict().items() if not k.startswith("decoder.")}
    state.update({f"decoder.{k}": v for k, v in ck["ema"].items()})
    tok.load_state_dict(state)
    model.tokenizer = tok.eval().to(next(model.tokenizer.parameters()).device)


def load_state(path: Path) -> dict:
    """A committed training state (fp16 safetensors): decoder.* and disc.* tensors, step in metadata."""
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as sf:
        meta = sf.metadata() or {}
        t = {k: sf.get_tensor(k).float() for k in sf.keys()}
    return {"decoder": {k[8:]: v for k, v in t.items() if k.startswith("decoder.")},
            "disc": {k[5:]: v for k, v in t.items() if k.startswith("disc.")},
            "step": int(meta.get("step", 0)), "lam_ema": float(meta["lam_ema"]) if meta.get("lam_ema") else None}


def add_args(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("realism", help="adversarial fine-tuning of a realism-conditioned decoder")
    p.add_argument("--weights", default=None, help="shipped weights to start from (default: the installed ones)")
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="runs/realism")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--codebooks", default="1024,256,64,16")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--dlr", type=float, default=2e-4)
    p.add_argument("--p-zero", type=float, default=0.25, help="share of images trained at r = 0")
    p.add_argument("--gan-start", type=int, default=300, help="steps of discriminator-only warm-up")
    p.add_argument("--gan-warmup", type=int, default=500, help="steps to ramp the adversarial weight")
    p.add_argument("--gan-factor", type=float, default=1.0)
    p.add_argument("--fm-weight", type=float, default=1.0)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--bf16", type=int, default=1, help="bf16 autocast on CPU (1) or fp32 (0)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--steps", type=int, default=10 ** 9)
    p.add_argument("--minutes", type=float, default=0)
    p.add_argument("--save-minutes", type=float, default=4)
    p.add_argument("--log-every", type=float, default=60)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--init-state", default=None, help="committed training state to continue from")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=train_realism)
