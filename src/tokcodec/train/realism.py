"""Train the realism-conditioned decoder (multi-realism, HiFiC-style adversarial fine-tuning).

    python -m tokcodec.train realism --weights weights --data DIR --out runs/realism [--resume]

Starts from the shipped tokenizer; the encoder, the codebooks and the prior stay frozen, so
every existing .tkc file stays valid. The fidelity decoder is frozen: the
realism decoder's weights are `w + r * delta_w` (see tokenizer.Decoder), so r = 0 is exactly the
shipped decoder. Each batch gets one realism r, uniform in [--r-min, 1]; the loss is

    distortion (MSE + 0.1 L1 + 0.05 (1 - MS-SSIM), as the fidelity decoder was trained)
    + r * gan_factor * lambda * (hinge adversarial loss + fm_weight * discriminator feature matching)

`lambda` balances the two gradients at the decoder's last layer (the VQGAN adaptive weight,
smoothed by an EMA), so no hand-tuned scale between pixel and GAN losses is needed. The discriminator sees the image at two scales and is conditioned on the tokens' code
vectors (upsampled), as in HiFiC; spectral norm on every convolution, hinge loss. No pretrained
network is used: the discriminator's features are the perceptual loss.

With --band 1, r is the user's realism: the batch is decoded as decode shows it (detail.py: the
fidelity decoder below a cut-off frequency, the realism decoder at rd above it), and every loss
sees that picture, so the decoder learns to put its texture where it is kept.

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

from .. import detail
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
    assert all(k.startswith("decoder.") and (".film." in k or "noise_scale" in k or "realism." in k
                                             or ".delta." in k) for k in missing), missing
    base = set(tok.decoder.base_names())
    for n, p in tok.decoder.named_parameters():  # the fidelity decoder (r = 0) stays as shipped
        p.requires_grad_(n not in base)
    return tok, m.metadata


def init_from_per_image_run(dec, disc, path: Path) -> None:
    """Warm start from a checkpoint of the earlier per-image-r decoder (every weight trained, FiLM
    not scaled by r): its weights become the deltas at r = 1, FiLM, noise and discriminator carry over."""
    ck = load_checkpoint(path)
    old = ck["ema"]
    with torch.no_grad():
        params = dict(dec.named_parameters())
        for n in dec.base_names():
            dec.delta[n.replace(".", "__")].copy_(old[n] - params[n])
        for n, p in params.items():
            if n in old and not n.startswith("delta.") and n not in dec.base_names():
                p.copy_(old[n])
    disc.load_state_dict(ck["disc"])


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
    train_params = [p for p in dec.parameters() if p.requires_grad]
    opt = torch.optim.Adam(train_params, lr=args.lr, betas=(0.5, 0.9))
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
    elif args.init_per_image:
        init_from_per_image_run(dec, disc, Path(args.init_per_image))
        ema.load_state_dict(dec.state_dict())
        print(f"initialised from the per-image-r run {args.init_per_image}", flush=True)
    elif args.init_state:  # continue from the commit: shipped realism decoder + committed discriminator
        st = load_state(Path(args.init_state))
        disc.load_state_dict(st["disc"])
        step, lam_ema = st["step"], st.get("lam_ema")
        print(f"continuing from the shipped decoder and {args.init_state} at step {step}", flush=True)
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
    last_layer = dec.delta["out__0__weight"]
    while step < args.steps and time.time() < t_end:
        x = data.batch(args.batch).to(rt.device)
        k = ks[int(torch.randint(len(ks), (1,), generator=gen))]
        with torch.no_grad(), amp:
            z = tok.encode_latent(x).float()
        codes = tok.embed(tok.quantize(z, k), k)
        # one r per batch (the weights depend on r); r = 0 is the frozen fidelity decoder
        r = args.r_min + (1 - args.r_min) * float(torch.rand((), generator=gen))
        if args.band:  # train what decode shows: the fidelity picture + the realism band (detail.py)
            rd, sigma = detail.knob(r)
            with torch.no_grad(), amp:
                y0 = dec(codes, 0.0).float()
            with amp:
                d = dec(codes, rd).float() - y0
            y = y0 + d - detail.blur(d, sigma)
        else:
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
        stats = {"dist": float(loss.detach()), "d_loss": float(d_loss.detach()), "r": r}
        if args.lowpass_weight:  # keep colour and tone: the adversarial term pushes saturation up
            lp = per_image((F.avg_pool2d(y.float(), 8) - F.avg_pool2d(x, 8)).abs()).mean()
            loss = loss + args.lowpass_weight * lp
            stats["lowpass"] = float(lp)
        if gan_on:
            disc.requires_grad_(False)
            with amp:
                fo = disc(y, codes)
            disc.requires_grad_(True)
            adv = sum(per_image(-lf) for lf, _ in fo)
            fm = sum(per_image((ff.float() - fr.detach().float()).abs())
                     for (_, ffs), (_, frs) in zip(fo, real) for ff, fr in zip(ffs, frs)) / 4
            g = (adv + args.fm_weight * fm).mean()
            gd = torch.autograd.grad(loss, last_layer, retain_graph=True)[0].norm()
            gg = torch.autograd.grad(g, last_layer, retain_graph=True)[0].norm()
            lam = float((gd / (gg + 1e-6)).clamp(0, 1e4))
            lam_ema = lam if lam_ema is None else 0.98 * lam_ema + 0.02 * lam
            warm = min(1.0, (step - args.gan_start + 1) / args.gan_warmup)
            loss = loss + args.gan_factor * warm * lam_ema * r * g
            stats.update(adv=float(adv.mean()), fm=float(fm.mean()), lam=lam_ema)
        if r > 0.8:
            stats["psnr_hi_r"] = float(-10 * torch.log10(F.mse_loss(y.detach().float().clamp(0, 1), x)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(train_params, 1.0)
        opt.step()
        with torch.no_grad():
            for pe, pd in zip(ema.parameters(), dec.parameters()):
                if pd.requires_grad:  # (lerp of equal frozen values would turn -0.0 into 0.0)
                    pe.lerp_(pd, 1 - args.ema)
            for be, bd in zip(ema.buffers(), dec.buffers()):
                be.copy_(bd)
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
    """A committed training state (fp16 safetensors): disc.* tensors, step and lambda in metadata."""
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as sf:
        meta = sf.metadata() or {}
        t = {k: sf.get_tensor(k).float() for k in sf.keys()}
    return {"disc": {k[5:]: v for k, v in t.items() if k.startswith("disc.")},
            "step": int(meta.get("step", 0)), "lam_ema": float(meta["lam_ema"]) if meta.get("lam_ema") else None}


def export(args) -> None:
    """EMA decoder -> weights/decoder.safetensors (fp16, its realism parts, for the base file's
    model id); discriminator -> a small training state (fp16) that `--init-state` resumes from,
    together with the shipped decoder."""
    from safetensors.torch import save_file
    m = W.load(args.weights)
    ck = load_checkpoint(Path(args.ckpt))
    cfg = TokenizerConfig.from_dict({**m.tokenizer.cfg.to_dict(), "realism_dim": REALISM_DIM})
    tok = Tokenizer(cfg)
    tok.decoder.load_state_dict(ck["ema"])
    prov = {"what": "realism-conditioned decoder (multi-realism adversarial fine-tuning of the v2 decoder)",
            "steps": ck["step"], "data": "../shared/data/train minus the held-out photos",
            "notes": args.notes}
    out = Path(args.out)
    from safetensors.torch import load_file
    base_id = W.fidelity_decoder_id(load_file(str(m.path)))
    W.save_decoder(out / W.DECODER_FILENAME, tok.decoder, cfg, m.base_id, base_id, prov)
    state = {f"disc.{k}": v.half().contiguous() for k, v in ck["disc"].items()}
    Path(args.state).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, args.state, metadata={"step": str(ck["step"]), "lam_ema": str(ck.get("lam_ema") or "")})
    print(f"wrote {out / W.DECODER_FILENAME} (model {m.base_id.hex()}) and {args.state} at step {ck['step']}")


def add_args(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("realism-export", help="write the trained realism decoder into the weights folder")
    e.add_argument("--ckpt", default="runs/realism/last.pt")
    e.add_argument("--weights", default=None, help="base weights (default: the installed ones)")
    e.add_argument("--out", default="weights")
    e.add_argument("--state", default="train-state/realism.safetensors")
    e.add_argument("--notes", default="")
    e.set_defaults(func=export)

    p = sub.add_parser("realism", help="adversarial fine-tuning of a realism-conditioned decoder")
    p.add_argument("--weights", default=None, help="shipped weights to start from (default: the installed ones)")
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="runs/realism")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--codebooks", default="1024,256,64,16")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--dlr", type=float, default=2e-4)
    p.add_argument("--r-min", type=float, default=0.05, help="r is drawn per batch from [r_min, 1]")
    p.add_argument("--gan-start", type=int, default=300, help="steps of discriminator-only warm-up")
    p.add_argument("--gan-warmup", type=int, default=500, help="steps to ramp the adversarial weight")
    p.add_argument("--gan-factor", type=float, default=4.0,
                   help="adversarial weight at r = 1, in units of the gradient-balancing weight")
    p.add_argument("--fm-weight", type=float, default=1.0)
    p.add_argument("--lowpass-weight", type=float, default=0.5,
                   help="weight of an L1 term on 8x8-average-pooled colours (tone and colour fidelity)")
    p.add_argument("--band", type=int, default=0,
                   help="1: r is the user's realism, and losses see detail.py's output (the fidelity "
                        "decoder below a cut-off, the realism decoder above it), as decode shows it")
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
    p.add_argument("--init-per-image", default=None, help="warm start from a checkpoint of the per-image-r run")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=train_realism)
