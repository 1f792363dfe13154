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
import json
import math
import time
from dataclasses import replace
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


def load_tokenizer(path: Path, device) -> Tokenizer:
    """The tokenizer of a training checkpoint (.pt) or of shipped weights (.safetensors)."""
    if path.suffix == ".safetensors":
        from ..weights import load
        return load(path, device).tokenizer
    ck = load_checkpoint(path)
    tok = Tokenizer(TokenizerConfig.from_dict(ck["config"])).to(device)
    tok.load_state_dict(ck["model"])
    return tok


@torch.no_grad()
def make_tokens(args) -> None:
    """Token grids of every image (and its mirror image) at every codebook. A `.npz` output is
    packed for travel (one flat array per K: uint16 for K > 256, else uint8, plus the grid
    shapes and the codebooks), a `.pt` output holds lists of int16 grids."""
    rt = setup(args.device, 0)
    tok = load_tokenizer(Path(args.ckpt), rt.device)
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
        if (n + 1) % 200 == 0:
            print(f"{n + 1}/{len(files)} images ({time.time() - t0:.0f}s)", flush=True)
    if str(args.out).endswith(".npz"):
        packed = {f"k{k}": np.concatenate([g.numpy().ravel() for g in v]).astype(np.uint16 if k > 256 else np.uint8)
                  for k, v in grids.items()}
        shapes = np.array([g.shape for g in grids[max(grids)]], dtype=np.int32)
        books = {f"codebook_{k}": tok.codebook(k).float().cpu().numpy() for k in tok.cfg.codebooks}
        np.savez_compressed(args.out, shapes=shapes, **packed, **books)
    else:
        torch.save({"grids": grids, "files": [str(f) for f in files]}, args.out)
    print(f"saved {args.out}: {len(grids[max(grids)])} grids per K", flush=True)


def load_tokens(path: Path) -> tuple[dict[int, list[torch.Tensor]], dict[int, torch.Tensor] | None]:
    """Token grids per K (and the codebooks, where the file holds them) from either format."""
    if path.suffix != ".npz":
        return torch.load(path, weights_only=False)["grids"], None
    z = np.load(path)
    shapes = z["shapes"]
    ends = np.cumsum(shapes[:, 0] * shapes[:, 1])
    grids, books = {}, {}
    for name in z.files:
        if name.startswith("k"):
            flat = torch.from_numpy(z[name].astype(np.int16))
            grids[int(name[1:])] = [flat[e - h * w:e].view(h, w) for (h, w), e in zip(shapes, ends)]
        elif name.startswith("codebook_"):
            books[int(name.split("_")[1])] = torch.from_numpy(z[name])
    return grids, books or None


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


class CodebookPrior(Prior):
    """Training parameterisation of the prior that shares statistics between similar codes.

    Each token embedding is a free vector plus an MLP of the token's codeword, and each output
    logit is a free linear head plus a bilinear term between the features and a learned
    description of the codeword (which includes the codeword itself: with unit-norm codes, a
    Gaussian around a predicted latent is exactly such a term). Codes that sit close in the
    tokenizer's latent space therefore start with similar embeddings and probabilities, which a
    free 1024-way head has to learn code by code. `bake()` folds everything into a plain `Prior`
    (per-K embedding tables and linear heads), so the shipped model and the exact integer
    evaluation are unchanged."""

    FEATS = 64

    def __init__(self, cfg: PriorConfig, codebooks: dict[int, torch.Tensor]):
        super().__init__(cfg)
        for k in cfg.codebooks:
            self.register_buffer(f"code_{k}", codebooks[k].float().clone())
        cd = codebooks[cfg.codebooks[0]].shape[1]
        self.emb_mlp = nn.Sequential(nn.Linear(cd, cfg.dim), nn.GELU(), nn.Linear(cfg.dim, cfg.dim))
        self.code_mlp = nn.Sequential(nn.Linear(cd, cfg.dim), nn.GELU(), nn.Linear(cfg.dim, self.FEATS - cd))
        self.query = nn.Linear(cfg.dim, self.FEATS)
        for m in (self.emb_mlp[-1], self.code_mlp[-1]):  # start as the plain model
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def code_feats(self, k: int) -> torch.Tensor:
        c = getattr(self, f"code_{k}")
        return torch.cat([c, self.code_mlp(c)], 1)  # (K, FEATS)

    def tables(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Effective embedding (K+1, dim), head weight (K, dim) and head bias (K,)."""
        c = getattr(self, f"code_{k}")
        extra = torch.cat([self.emb_mlp(c), c.new_zeros(1, self.cfg.dim)])  # [MASK] stays free
        g = self.code_feats(k)
        head = self.head[str(k)]
        return (self.emb[str(k)].weight + extra, head.weight + g @ self.query.weight,
                head.bias + g @ self.query.bias)

    def forward(self, tokens, k, where=None):
        emb, w, b = self.tables(k)
        x = emb[tokens]
        for blk in self.blocks:
            x = blk(x)
        x = self.ln_out(x)
        return F.linear(x if where is None else x[where], w, b)

    @torch.no_grad()
    def bake(self) -> Prior:
        plain = Prior(self.cfg)
        state = {n: v for n, v in self.state_dict().items() if n in plain.state_dict()}
        plain.load_state_dict(state)
        for k in self.cfg.codebooks:
            emb, w, b = self.tables(k)
            plain.emb[str(k)].weight.copy_(emb)
            plain.head[str(k)].weight.copy_(w)
            plain.head[str(k)].bias.copy_(b)
        return plain


def load_codebooks(path: Path) -> dict[int, torch.Tensor]:
    ck = load_checkpoint(path)
    return {int(n.split("_")[1]): v for n, v in ck["model"].items() if n.startswith("codebook_")}


def load_prior(ck: dict) -> Prior:
    """A plain Prior from a training checkpoint of either parameterisation."""
    cfg = PriorConfig.from_dict(ck["config"])
    if ck.get("codebooks") is not None:
        model = CodebookPrior(cfg, ck["codebooks"])
        model.load_state_dict(ck["model"])
        return model.bake()
    model = Prior(cfg)
    model.load_state_dict(ck["model"])
    return model


def _split(grids, holdout: int):
    train = {k: v[:-holdout] for k, v in grids.items()}
    val = {k: v[-holdout:] for k, v in grids.items()}
    return train, val


def held_out(val: dict[int, list[torch.Tensor]], crop: int, n: int = 4, batch: int = 32) -> dict[int, list[tuple]]:
    """The validation set: n batches of crops of the held-out grids per codebook, drawn once
    (fixed seed), so that every validation measures the same crops, stages and drops."""
    draw = StageBatches(val, crop, 12345)
    return {k: [draw.batch(k, batch) for _ in range(n)] for k in sorted(val, reverse=True)}


@torch.no_grad()
def validate(model: Prior, held: dict[int, list[tuple]], device) -> dict[int, float]:
    """Bits per token on the validation set (`held_out`)."""
    model.eval()
    out = {}
    for k in model.cfg.codebooks:
        bits = []
        for inp, toks, tgt in held[k]:
            tgt = tgt.to(device)
            logits = model(inp.to(device), k, tgt)
            ce = F.cross_entropy(logits.float(), toks.to(device)[tgt])
            bits.append(ce.item() / math.log(2))
        out[k] = float(np.mean(bits))
    model.train()
    return out


def train_prior(args) -> None:
    rt = setup(args.device, args.seed)
    grids, packed_books = load_tokens(Path(args.tokens))
    train, val = _split(grids, args.holdout)
    cfg = PriorConfig(**{n: getattr(args, n) for n in ("dim", "depth", "heads", "mlp", "window")},
                      codebooks=tuple(sorted(grids, reverse=True)))
    codebooks = load_codebooks(Path(args.tokenizer)) if args.tokenizer else (packed_books if args.tied else None)
    model = (CodebookPrior(cfg, codebooks) if codebooks else Prior(cfg)).to(rt.device)
    out = Path(args.out)
    ckpt = out / "last.pt"
    step, elapsed, ck, init_steps = 0, 0.0, None, 0
    if args.resume and ckpt.exists():
        ck = load_checkpoint(ckpt)
        step, elapsed, init_steps = ck["step"], ck.get("elapsed", 0.0), ck.get("init_steps", 0)
        print(f"resumed at step {step}", flush=True)
    elif args.init and args.init.endswith(".safetensors"):  # the shipped prior's float twin
        from ..weights import load
        shipped = load(args.init)
        # a shipped prior of this very shape (a prior file's: resume it), else the base file's
        base = shipped.prior if shipped.prior.cfg == cfg else shipped.prior_for(shipped.base_id)
        if replace(base.cfg, depth=cfg.depth) != cfg or cfg.depth > base.cfg.depth:
            raise SystemExit(f"{args.init} holds a prior of another shape: {base.cfg}")
        # a shallower prior starts from the first blocks (and the tables and heads) of this one
        ck = {"model": {n: v for n, v in base.float_twin().state_dict().items()
                        if not n.startswith("blocks.") or int(n.split(".")[1]) < cfg.depth}}
        meta = shipped.prior_metadata if base is shipped.prior and shipped.prior_metadata else shipped.metadata
        init_steps = json.loads(meta.get("provenance", "{}")).get("prior_steps", 0)
        print(f"initialised from the prior in {args.init} ({init_steps} steps, depth {base.cfg.depth})", flush=True)
    elif args.init:  # warm start from another run; lr schedule and optimiser start afresh
        ck = load_checkpoint(Path(args.init))
        print(f"initialised from {args.init} (step {ck['step']})", flush=True)
        init_steps = ck["step"] + ck.get("init_steps", 0)
    if ck is not None:
        missing, unexpected = model.load_state_dict(ck["model"], strict=False)
        if unexpected or any(not n.startswith(("emb_mlp", "code_mlp", "query", "code_")) for n in missing):
            raise SystemExit(f"checkpoint does not fit this model: missing {missing}, unexpected {unexpected}")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    if args.resume and ck is not None and "opt" in ck:
        opt.load_state_dict(ck["opt"])
    ddp = model
    if rt.world > 1:
        ddp = nn.parallel.DistributedDataParallel(  # per-K heads sit idle in other K's steps
            model, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None,
            find_unused_parameters=True)
    batches = StageBatches(train, args.crop, args.seed + step + 1000 * rt.rank)
    held = held_out(val, args.crop, args.val_batches)
    if rt.main:
        print(f"prior: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
              f"{len(train[max(train)])} train grids, device {rt.device}", flush=True)
    # K=1024 and 256 are the hardest to predict and the ones rate control uses most at
    # 0.02-0.05 bpp, so they get two turns in six
    ks = [1024, 256, 1024, 64, 256, 16] if tuple(cfg.codebooks) == (1024, 256, 64, 16) else list(cfg.codebooks)
    prog = Progress(rt, args.log_every)
    t_start, last_save = time.time(), time.time()

    def state() -> dict:
        return {"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                "elapsed": time.time() - t_start + elapsed, "config": cfg.to_dict(),
                "codebooks": codebooks, "init_steps": init_steps}
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
        prog.update(step, args.batch * rt.world, **{f"bits{k}": loss.item() / math.log(2)})
        if rt.main and time.time() - last_save > args.save_minutes * 60:
            v = validate(model, held, rt.device)
            print("val bits/token " + " ".join(f"K={k}: {b:.3f} ({b / math.log2(k):.3f} of log2 K)" for k, b in v.items()), flush=True)
            save_checkpoint(ckpt, state())
            last_save = time.time()
    if rt.main:
        save_checkpoint(ckpt, state())
        v = validate(model, held, rt.device)
        print("final val bits/token " + " ".join(f"K={k}: {b:.3f}" for k, b in v.items()), flush=True)
        print(f"saved {ckpt} at step {step}", flush=True)


def export(args) -> None:
    from ..weights import save
    tk = load_checkpoint(Path(args.tokenizer))
    tok = Tokenizer(TokenizerConfig.from_dict(tk["config"]))
    tok.load_state_dict(tk["model"])
    pk = load_checkpoint(Path(args.prior))
    pcfg = PriorConfig.from_dict(pk["config"])
    prior = load_prior(pk)
    provenance = {"tokenizer_steps": tk.get("step"), "ladder_steps": tk.get("ladder_steps"),
                  "prior_steps": pk.get("step", 0) + pk.get("init_steps", 0), "prior_seconds": round(pk.get("elapsed", 0)),
                  "data": args.data_note, "device": args.device_note}
    mid = save(args.out, tok, quantize(prior), pcfg, provenance)
    print(f"wrote {args.out}: model id {mid.hex()}", flush=True)
    ExactPrior(pcfg, quantize(prior))  # sanity: the exact model builds


def export_prior(args) -> None:
    """Write a prior file (weights.PRIOR_FILENAME) that extends the base file: files made with
    it name it by its own model id; the base file's prior still decodes the files naming it."""
    from safetensors import safe_open

    from .. import weights as W
    with safe_open(args.weights, framework="pt") as sf:
        base = {k: sf.get_tensor(k) for k in sf.keys()}
    pk = load_checkpoint(Path(args.prior))
    prior = load_prior(pk)
    q = quantize(prior)
    ExactPrior(prior.cfg, q)  # sanity: the exact model builds
    provenance = {"prior_steps": pk.get("step", 0) + pk.get("init_steps", 0), "init_steps": pk.get("init_steps", 0),
                  "prior_seconds": round(pk.get("elapsed", 0)), "data": args.data_note, "device": args.device_note}
    mid = W.save_prior(args.out, q, prior.cfg, base, provenance)
    print(f"wrote {args.out}: model id {mid.hex()}", flush=True)


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
    p.add_argument("--init", default=None, help="warm start from this prior checkpoint")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer checkpoint whose codebooks parameterise embeddings and heads")
    p.add_argument("--val-batches", type=int, default=4, help="held-out batches of 32 crops per K")
    p.add_argument("--tied", action="store_true",
                   help="tie embeddings and heads to the codebooks stored in a .npz token file")
    for name, default in ((n, getattr(PriorConfig, n)) for n in ("dim", "depth", "heads", "mlp", "window")):
        p.add_argument(f"--{name}", type=int, default=default, help=f"prior {name} (default {default})")
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

    x = sub.add_parser("export-prior", help="write a prior file that extends the shipped base file")
    x.add_argument("--prior", required=True, help="prior training checkpoint")
    x.add_argument("--weights", default="weights/tokc.safetensors", help="the base file it extends")
    x.add_argument("--out", default="weights/prior.safetensors")
    x.add_argument("--data-note", default="../shared/data/train (3,818 photos; Kodak never used)")
    x.add_argument("--device-note", default="CPU, 2 cores")
    x.set_defaults(func=export_prior)
