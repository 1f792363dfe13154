"""Fine-tune the fidelity decoder on every codebook of the ladder.

    python -m tokcodec.train decoder --weights weights/tokc.safetensors --data DIR --val DIR
        --out runs/decoder [--minutes N] [--init runs/decoder/fidelity.safetensors]

The tokenizer's decoder was trained with the largest codebook (K = 1024) only; the smaller
codebooks of the ladder were fitted to it afterwards with the decoder frozen. Rate control uses
K = 16 and 64 at the lowest rates, so there the decoder sees code vectors it was never trained
on, and it is worst at exactly what those rates need: the right mean colour and tone of each
16x16 block. This command trains the decoder on all of them: each crop of a batch is quantised
with a codebook drawn uniformly from the ladder. Encoder and codebooks are frozen, so the
tokens of every file, the prior and the model id do not change; only the pixels a file decodes
to do.

Loss: MSE + 0.1 L1 + 0.05 (1 - MS-SSIM) (the tokenizer's) + `--lowpass-weight` x MSE of both
images average-pooled 8x (tone and colour of each 8x8 area; the colour error users see).

The learning rate follows the wall clock (linear warm-up, cosine decay to 5 % at --minutes), so
a run fits a fixed time budget (e.g. a lent GPU). What ships is the EMA of the weights. Every
--save-seconds it writes `raw.safetensors` (the raw weights, to resume from) and `ema.safetensors`
(fp16, prefix `fid.`) into --out, scores the EMA decoder on the validation crops (PSNR per
codebook, and of the 16x-pooled images) and keeps the best-scoring one (mean PSNR over the
codebooks) as `fidelity.safetensors`; the base decoder's score is printed first. Training on a
few thousand crops for many epochs can overfit: the validation keeps that from shipping.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from ..metrics import ms_ssim
from ..tokenizer import Tokenizer, TokenizerConfig
from ..weights import fidelity_tensors, read_fidelity
from .common import setup


def read_base(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Every tensor of a base weights file, and its metadata."""
    with safe_open(path, framework="pt") as sf:
        return {k: sf.get_tensor(k) for k in sf.keys()}, (sf.metadata() or {})


def tokenizer_from(tensors: dict[str, torch.Tensor], meta: dict) -> Tokenizer:
    """The base file's tokenizer, without realism parts."""
    cfg = TokenizerConfig.from_dict({**json.loads(meta["tokenizer_config"]), "realism_dim": 0})
    tok = Tokenizer(cfg)
    tok.load_state_dict({k[4:]: v.float() for k, v in tensors.items() if k.startswith("tok.")})
    return tok


def load_tokenizer(path: str) -> tuple[Tokenizer, dict]:
    """The base file's tokenizer (no realism parts) and the file's metadata."""
    tensors, meta = read_base(path)
    return tokenizer_from(tensors, meta), meta


def load_images(folder: Path, limit: int | None = None) -> torch.Tensor:
    """All images of a folder (same size) as one uint8 tensor (N, 3, H, W)."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".webp", ".jpg", ".jpeg"})
    if limit:
        files = files[:limit]
    arrs = []
    for f in files:
        with Image.open(f) as im:
            arrs.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    if not arrs:
        raise SystemExit(f"error: no images in {folder}")
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


def random_crops(images: torch.Tensor, n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """n random crops of `size` px with horizontal flips from a uint8 stack -> float [0, 1]."""
    N, _, H, W = images.shape
    idx = torch.randint(0, N, (n,), generator=gen).tolist()
    ys = torch.randint(0, H - size + 1, (n,), generator=gen).tolist()
    xs = torch.randint(0, W - size + 1, (n,), generator=gen).tolist()
    flip = (torch.rand(n, generator=gen) < 0.5).tolist()
    out = []
    for i in range(n):
        c = images[idx[i], :, ys[i]:ys[i] + size, xs[i]:xs[i] + size]
        out.append(c.flip(-1) if flip[i] else c)
    return torch.stack(out).float().div_(255)


def quantised_codes(tok: Tokenizer, x: torch.Tensor, ks: list[int], gen: torch.Generator) -> torch.Tensor:
    """Code vectors of x, each crop quantised with a codebook drawn uniformly from `ks`."""
    with torch.no_grad():
        z = tok.encode_latent(x).float()
        pick = torch.randint(0, len(ks), (x.shape[0],), generator=gen).to(x.device)
        out = torch.empty_like(z)
        for j, k in enumerate(ks):
            sel = pick == j
            if sel.any():
                zs = z[sel]
                out[sel] = tok.embed(tok.quantize(zs, k), k)
    return out


def loss_fn(x: torch.Tensor, y: torch.Tensor, lowpass_weight: float) -> torch.Tensor:
    y = y.float()
    loss = F.mse_loss(y, x) + 0.1 * F.l1_loss(y, x) + 0.05 * (1 - ms_ssim(y, x, scales=3).mean())
    if lowpass_weight:
        loss = loss + lowpass_weight * F.mse_loss(F.avg_pool2d(y, 8), F.avg_pool2d(x, 8))
    return loss


@torch.no_grad()
def validate(tok: Tokenizer, decoder: torch.nn.Module, val: torch.Tensor, device, autocast) -> dict:
    """Mean PSNR (dB) per codebook on the validation crops, and of their 16x-pooled versions."""
    res = {}
    for k in sorted(tok.cfg.codebooks):
        mse, mse_lp = [], []
        for i in range(0, val.shape[0], 16):
            x = val[i:i + 16].to(device).float().div(255)
            z = tok.encode_latent(x).float()
            with autocast:
                y = decoder(tok.embed(tok.quantize(z, k), k))
            y = (y.float().clamp(0, 1) * 255).round() / 255
            mse.append(((y - x) ** 2).flatten(1).mean(1))
            mse_lp.append(((F.avg_pool2d(y, 16) - F.avg_pool2d(x, 16)) ** 2).flatten(1).mean(1))
        m, ml = torch.cat(mse), torch.cat(mse_lp)
        res[k] = (float((-10 * torch.log10(m)).mean()), float((-10 * torch.log10(ml.clamp_min(1e-10))).mean()))
    return res


def save_decoder_file(path: Path, decoder: torch.nn.Module, meta: dict) -> None:
    """The decoder in the fidelity file layout (weights.fidelity_tensors), written atomically."""
    tmp = path.with_suffix(".tmp")
    save_file(fidelity_tensors(decoder), str(tmp), metadata={k: str(v) for k, v in meta.items()})
    os.replace(tmp, path)


def load_decoder_file(path: Path, decoder: torch.nn.Module) -> dict:
    """Load a fidelity-layout file into `decoder`; returns the file's metadata."""
    meta, state = read_fidelity(path)
    decoder.load_state_dict(state)
    return meta


def train_decoder(args) -> None:
    t_start = time.time()
    rt = setup(args.device, args.seed)
    dev = rt.device
    if args.threads:
        torch.set_num_threads(args.threads)
    tok, _ = load_tokenizer(args.weights)
    tok.to(dev).eval().requires_grad_(False)
    base = copy.deepcopy(tok.decoder)
    decoder = tok.decoder
    if args.init:
        load_decoder_file(Path(args.init), decoder)
    decoder.train().requires_grad_(True)
    ema = copy.deepcopy(decoder).eval().requires_grad_(False)
    if dev.type == "cuda":
        tok.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    images = load_images(Path(args.data), args.limit)
    if dev.type == "cuda":  # crops are cut on the GPU: no host-to-device copy per step
        images = images.to(dev)
    val = load_images(Path(args.val), args.val_limit) if args.val else None
    ks = sorted(tok.cfg.codebooks)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"decoder: {sum(p.numel() for p in decoder.parameters()) / 1e6:.2f}M params, "
          f"{images.shape[0]} crops of {images.shape[-1]} px, val {0 if val is None else val.shape[0]}, "
          f"batch {args.batch} x {args.crop} px, codebooks {ks}, device {dev}, "
          f"loaded in {time.time() - t_start:.0f}s", flush=True)
    opt = torch.optim.AdamW(decoder.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    budget = args.minutes * 60
    t0 = last_save = last_log = time.time()
    step, acc, n_acc = 0, 0.0, 0
    provenance = {"base": Path(args.weights).name, "data": args.data_name or str(args.data),
                  "crop": args.crop, "batch": args.batch, "lr": args.lr, "lowpass_weight": args.lowpass_weight,
                  "ema": args.ema, "codebooks": ks, "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"}

    best = -math.inf
    if val is not None:
        v = validate(tok, base, val, dev, rt.autocast)
        best = sum(p for p, _ in v.values()) / len(v)
        print(f"val base: mean {best:.3f} dB", json.dumps(v), flush=True)

    def save():
        nonlocal best
        info = {**provenance, "steps": step, "seconds": round(time.time() - t0)}
        save_decoder_file(out / "raw.safetensors", decoder, {"provenance": json.dumps(info)})
        save_decoder_file(out / "ema.safetensors", ema, {"provenance": json.dumps(info)})
        if val is None:
            return
        v = validate(tok, ema, val, dev, rt.autocast)
        score = sum(p for p, _ in v.values()) / len(v)
        print(f"val ema step {step}: mean {score:.3f} dB", json.dumps(v), flush=True)
        if score > best:  # the best EMA on the validation crops is what ships
            best = score
            info["val_mean_psnr"] = round(score, 3)
            save_decoder_file(out / "fidelity.safetensors", ema, {"provenance": json.dumps(info)})

    while True:
        frac = (time.time() - t0) / budget
        if frac >= 1 or step >= args.steps:
            break
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        x = random_crops(images, args.batch, args.crop, gen).to(dev, non_blocking=True)
        if dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with rt.autocast:
            codes = quantised_codes(tok, x, ks, gen)
            y = decoder(codes)
        loss = loss_fn(x, y, args.lowpass_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            d = min(args.ema, (1 + step) / (10 + step))
            torch._foreach_lerp_(list(ema.parameters()), list(decoder.parameters()), 1 - d)
        step += 1
        acc += float(loss.detach()) if step % 10 == 0 else 0.0
        n_acc += step % 10 == 0
        now = time.time()
        if now - last_log > args.log_every:
            print(f"step {step} loss {acc / max(1, n_acc):.5f} lr {lr:.2e} {step / (now - t0):.1f} steps/s "
                  f"{now - t0:.0f}s", flush=True)
            acc, n_acc, last_log = 0.0, 0, now
        if now - last_save > args.save_seconds:
            save()
            last_save = now
    save()
    print(f"done at step {step} ({time.time() - t0:.0f}s); best val mean {best:.3f} dB", flush=True)


def add_args(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decoder", help="fine-tune the fidelity decoder on every codebook (encoder, codebooks frozen)")
    p.add_argument("--weights", default="weights/tokc.safetensors", help="the base weights file")
    p.add_argument("--data", required=True, help="folder of training crops, all the same size")
    p.add_argument("--data-name", default="", help="what the data is, for the provenance")
    p.add_argument("--val", default="", help="folder of validation crops, all the same size")
    p.add_argument("--out", default="runs/decoder")
    p.add_argument("--init", default="", help="start from this fidelity.safetensors / raw.safetensors")
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--lowpass-weight", type=float, default=0.5)
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--steps", type=int, default=10 ** 9)
    p.add_argument("--save-seconds", type=float, default=60)
    p.add_argument("--log-every", type=float, default=20)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--val-limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=train_decoder)

    q = sub.add_parser("export-decoder", help="install a trained fidelity decoder beside the base weights")
    q.add_argument("--ckpt", required=True, help="fidelity.safetensors written by `decoder`")
    q.add_argument("--weights", default="weights/tokc.safetensors", help="the base weights file")
    q.add_argument("--number", type=int, default=1, help="the decoder's number (files name it; >= 1)")
    q.add_argument("--out", default="weights/fidelity.safetensors")
    q.set_defaults(func=export_fidelity)


def main(argv=None) -> None:
    """`python -m tokcodec.train.decoder ...`: the same command without importing the other
    trainers (the codec and its entropy coder need not be installed where this one runs)."""
    parser = argparse.ArgumentParser(prog="python -m tokcodec.train.decoder")
    add_args(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["decoder", *(argv if argv is not None else __import__("sys").argv[1:])])
    args.func(args)


def export_fidelity(args) -> None:
    """Install a trained decoder (fidelity.safetensors from `train decoder`) as the base file's
    newer fidelity decoder number --number (weights/fidelity.safetensors)."""
    from .. import weights as W
    tensors, meta = read_base(args.weights)
    tok = tokenizer_from(tensors, meta)
    provenance = json.loads(load_decoder_file(Path(args.ckpt), tok.decoder).get("provenance", "{}"))
    mid = W.model_id(W.bitstream_tensors(tensors))
    W.save_fidelity(args.out, tok.decoder, args.number, mid, provenance)
    print(f"wrote {args.out}: fidelity decoder {args.number} for model {mid.hex()}")


if __name__ == "__main__":
    main()
