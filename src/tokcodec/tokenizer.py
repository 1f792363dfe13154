"""VQ tokenizer: a convolutional autoencoder with downsampling factor 16.

    image (3, H, W) in [0, 1]
      -> PixelUnshuffle(4) stem (no convolution at full resolution)
      -> residual conv stages at H/4, H/8, H/16
      -> 1x1 projection to a low-dimensional code vector, l2-normalised
      -> nearest codeword (cosine) in a codebook of K vectors   => token grid (H/16, W/16)
    decode: codewords -> mirror of the encoder with PixelShuffle upsampling -> image

One encoder/decoder pair serves a ladder of codebooks (K = 1024, 256, 64, 16); the
small codebooks are k-means reductions of the large one, fine-tuned with the encoder
and decoder frozen. Encoding need not be bit-exact across machines: the tokens are
transmitted, so only the decoder's pixels can differ by rounding.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

FACTOR = 16


@dataclass
class TokenizerConfig:
    code_dim: int = 8
    widths: tuple[int, int, int] = (64, 128, 256)  # channels at H/4, H/8, H/16
    enc_blocks: tuple[int, int, int] = (1, 1, 2)
    dec_blocks: tuple[int, int, int] = (2, 3, 4)
    codebooks: tuple[int, ...] = (1024, 256, 64, 16)
    realism_dim: int = 0  # > 0: the decoder takes a realism value r in [0, 1] (weight delta, FiLM, noise)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TokenizerConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class ResBlock(nn.Module):
    """Residual block. With `cond_dim` > 0 it is realism-conditioned: the hidden activation is
    modulated by r times a scale and shift computed from the realism embedding (FiLM), and a
    one-channel noise map, scaled per channel and by r, is added to it (StyleGAN-style). Both
    vanish at r = 0."""

    def __init__(self, ch: int, cond_dim: int = 0):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        nn.init.zeros_(self.conv2.bias)
        self.conv2.weight.data.mul_(0.1)
        if cond_dim:
            self.film = nn.Linear(cond_dim, 2 * ch)
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
            self.noise_scale = nn.Parameter(torch.zeros(ch))

    def forward(self, x: torch.Tensor, cond: "Conditioning | None" = None) -> torch.Tensor:
        # without autograd the steps on the fresh hidden activation run in place (the same
        # values, fewer tile-size temporaries); x itself is never written
        ip = not torch.is_grad_enabled()
        h = self.conv1(F.silu(x))
        if cond is not None and hasattr(self, "film"):
            r = cond.r.to(h.dtype)[:, None, None, None]
            scale, shift = (self.film(cond.emb).to(h.dtype)[:, :, None, None] * r).chunk(2, 1)
            h = h.mul_(1 + scale).add_(shift) if ip else h * (1 + scale) + shift
            n = cond.noise(h.shape[0], h.shape[2], h.shape[3], h.device, h.dtype)
            noise = (r * self.noise_scale.to(h.dtype)[None, :, None, None]) * n
            h = h.add_(noise) if ip else h + noise
        out = self.conv2(F.silu(h, inplace=ip))
        return out.add_(x) if ip and out.dtype == x.dtype else x + out


class Conditioning:
    """Realism r per image (B,), its embedding (B, cond_dim), and the noise source: a CPU
    torch.Generator seeded from the decode seed (same noise on every device and thread count),
    or None to draw from torch's global RNG (training)."""

    def __init__(self, r: torch.Tensor, emb: torch.Tensor, generator: torch.Generator | None):
        self.r, self.emb, self.generator = r, emb, generator

    maps: "list[torch.Tensor] | None" = None  # noise drawn beforehand for a whole image (tiles)
    window: tuple[int, int, int] = (0, 0, 1)    # the tile's first token row, column; grid height
    calls: int = 0

    def noise(self, b: int, h: int, w: int, device, dtype) -> torch.Tensor:
        if self.maps is not None:  # a tile: its part of the whole image's noise map
            m = self.maps[self.calls]
            self.calls += 1
            y, x, grid_h = self.window
            s = m.shape[-2] // grid_h  # pixels per token at this block's resolution
            return m[..., y * s:y * s + h, x * s:x * s + w].to(device, dtype)
        if self.generator is None:
            return torch.randn(b, 1, h, w, device=device, dtype=dtype)
        return torch.randn(b, 1, h, w, generator=self.generator).to(device, dtype)


class RealismEmbedding(nn.Module):
    """r in [0, 1] -> (r, sin/cos of pi*k*r for k = 1..4) -> 2-layer MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(9, dim), nn.SiLU(), nn.Linear(dim, dim), nn.SiLU())

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        k = torch.arange(1, 5, device=r.device, dtype=torch.float32) * math.pi
        a = r.float()[:, None] * k
        return self.mlp(torch.cat([r.float()[:, None], a.sin(), a.cos()], 1))


class Encoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        c1, c2, c3 = cfg.widths
        b1, b2, b3 = cfg.enc_blocks
        self.stem = nn.Sequential(nn.PixelUnshuffle(4), nn.Conv2d(48, c1, 3, padding=1))
        self.s1 = nn.Sequential(*[ResBlock(c1) for _ in range(b1)])
        self.down1 = nn.Conv2d(c1, c2, 4, stride=2, padding=1)
        self.s2 = nn.Sequential(*[ResBlock(c2) for _ in range(b2)])
        self.down2 = nn.Conv2d(c2, c3, 4, stride=2, padding=1)
        self.s3 = nn.Sequential(*[ResBlock(c3) for _ in range(b3)])
        self.out = nn.Conv2d(c3, cfg.code_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.s1(self.stem(x * 2 - 1))
        x = self.s2(self.down1(x))
        x = self.s3(self.down2(x))
        return self.out(F.silu(x))


class Decoder(nn.Module):
    """Code vectors -> image. With `cfg.realism_dim` > 0 the decoder takes a realism value r in
    [0, 1] for the whole batch: every weight of the fidelity decoder becomes `w + r * delta_w`,
    and every residual block gets r-scaled FiLM and noise. r = 0 is therefore exactly the
    fidelity decoder (same weights, no noise, seed ignored); r = 1 is the decoder trained with
    the adversarial loss at full weight; between them the training covers every r."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        c1, c2, c3 = cfg.widths
        b1, b2, b3 = cfg.dec_blocks
        d = cfg.realism_dim
        self.inp = nn.Conv2d(cfg.code_dim, c3, 3, padding=1)
        self.s3 = nn.ModuleList([ResBlock(c3, d) for _ in range(b3)])
        self.up2 = nn.Sequential(nn.Conv2d(c3, c2 * 4, 3, padding=1), nn.PixelShuffle(2))
        self.s2 = nn.ModuleList([ResBlock(c2, d) for _ in range(b2)])
        self.up1 = nn.Sequential(nn.Conv2d(c2, c1 * 4, 3, padding=1), nn.PixelShuffle(2))
        self.s1 = nn.ModuleList([ResBlock(c1, d) for _ in range(b1)])
        self.out = nn.Sequential(nn.Conv2d(c1, 48, 3, padding=1), nn.PixelShuffle(4))
        if d:
            base = [n for n, _ in self.named_parameters() if ".film." not in n and "noise_scale" not in n]
            self.realism = RealismEmbedding(d)
            self.delta = nn.ParameterDict({n.replace(".", "__"): nn.Parameter(torch.zeros_like(p))
                                           for n, p in self.named_parameters() if n in base})

    @property
    def conditioned(self) -> bool:
        return hasattr(self, "realism")

    def base_names(self) -> list[str]:
        return [k.replace("__", ".") for k in self.delta] if self.conditioned else []

    def noise_maps(self, h: int, w: int, generator: torch.Generator) -> list[torch.Tensor]:
        """The noise maps a forward pass on an (h, w) token grid draws from `generator`, in the
        order it draws them: one (1, 1, h s, w s) map per conditioned block, s = 1, 2, 4 pixels
        per token at the block's resolution."""
        sizes = [1] * len(self.s3) + [2] * len(self.s2) + [4] * len(self.s1)
        return [torch.randn(1, 1, h * s, w * s, generator=generator) for s in sizes]

    def forward(self, z: torch.Tensor, realism: float = 0.0,
                generator: torch.Generator | None = None, _merged: bool = False,
                tile: "tuple[list[torch.Tensor], tuple[int, int, int]] | None" = None) -> torch.Tensor:
        """`tile`: (noise maps of the whole image from `noise_maps`, (first token row, first
        token column, whole grid height)) when z is a window of a larger grid."""
        r = float(realism)
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"realism must be in [0, 1], got {r}")
        cond = None
        if self.conditioned and r > 0:
            if not _merged:  # run again with the weights for this r
                params = dict(self.named_parameters())
                merged = {n: params[n] + r * self.delta[n.replace(".", "__")] for n in self.base_names()}
                return torch.func.functional_call(self, merged, (z,), {"realism": r, "generator": generator,
                                                                         "_merged": True, "tile": tile}, strict=False)
            rt = torch.full((z.shape[0],), r, device=z.device)
            cond = Conditioning(rt, self.realism(rt), generator)
            if tile is not None:
                cond.maps, cond.window = tile
        x = self.inp(z)
        for b in self.s3:
            x = b(x, cond)
        x = self.up2(x)
        for b in self.s2:
            x = b(x, cond)
        x = self.up1(x)
        for b in self.s1:
            x = b(x, cond)
        # the output convolution in float32 even under bfloat16 autocast (precision.py): a
        # bfloat16 output holds only 8 bits, a rounding of up to half a level of its own
        with torch.autocast(x.device.type, enabled=False):
            if torch.is_grad_enabled():
                return (self.out(F.silu(x.float())) + 1) / 2
            # the same operations on fresh tensors in place: a 12-MP photo's decoder tiles hold
            # three fewer float32 copies of the full-resolution output (47-62 MB each)
            return self.out(F.silu(x.float(), inplace=True)).add_(1).div_(2)


def l2norm(x: torch.Tensor, dim: int) -> torch.Tensor:
    return F.normalize(x, dim=dim, eps=1e-6)


class Tokenizer(nn.Module):
    """Encoder, decoder and a ladder of l2-normalised codebooks (buffers `codebook_K`)."""

    def __init__(self, cfg: TokenizerConfig | None = None):
        super().__init__()
        self.cfg = cfg or TokenizerConfig()
        self.encoder = Encoder(self.cfg)
        self.decoder = Decoder(self.cfg)
        for k in self.cfg.codebooks:
            self.register_buffer(f"codebook_{k}", l2norm(torch.randn(k, self.cfg.code_dim), 1))
        self.newer_fidelity = nn.ModuleDict()  # number (str) -> newer fidelity decoder (weights.load)

    def add_fidelity_decoder(self, number: int, decoder: "Decoder") -> None:
        if number < 1 or decoder.conditioned:
            raise ValueError("a newer fidelity decoder has a number >= 1 and no realism parts")
        self.newer_fidelity[str(number)] = decoder

    @property
    def fidelity_decoders(self) -> list[int]:
        """Numbers of the fidelity decoders held: 0 (this tokenizer's own decoder at realism 0)
        and those added by add_fidelity_decoder."""
        return [0] + sorted(int(n) for n in self.newer_fidelity)

    def fidelity_decoder(self, number: int = 0) -> "Decoder":
        """The fidelity decoder numbered `number` (0: this tokenizer's own, used at realism 0)."""
        return self.newer_fidelity[str(number)] if number else self.decoder

    def codebook(self, k: int) -> torch.Tensor:
        if k not in self.cfg.codebooks:
            raise ValueError(f"codebook K={k} not in this model (has {list(self.cfg.codebooks)})")
        return getattr(self, f"codebook_{k}")

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch (B,3,H,W), H and W multiples of 16 -> unit code vectors (B,D,H/16,W/16)."""
        return l2norm(self.encoder(x), 1)

    def quantize(self, z: torch.Tensor, k: int) -> torch.Tensor:
        """Unit code vectors (B,D,h,w) -> token indices (B,h,w) by maximum cosine similarity."""
        cb = self.codebook(k).to(z.dtype)
        sim = torch.einsum("bdhw,kd->bkhw", z, cb)
        return sim.argmax(1)

    def embed(self, tokens: torch.Tensor, k: int) -> torch.Tensor:
        """Token indices (B,h,w) -> code vectors (B,D,h,w)."""
        return self.codebook(k)[tokens].permute(0, 3, 1, 2)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return self.quantize(self.encode_latent(x), k)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, k: int, realism: float = 0.0,
               generator: torch.Generator | None = None, tile=None, fidelity: int = 0) -> torch.Tensor:
        """Pixels from tokens. At realism 0, `fidelity` picks the fidelity decoder (0: the
        decoder's own weights; n >= 1: one added by add_fidelity_decoder); realism > 0 is the
        realism decoder (its deltas extend decoder 0)."""
        if realism == 0 and fidelity:
            return self.fidelity_decoder(fidelity)(self.embed(tokens, k)).clamp_(0, 1)
        return self.decoder(self.embed(tokens, k), realism, generator, tile=tile).clamp_(0, 1)


@dataclass
class VQState:
    """Training-time EMA statistics of one codebook (k-means style updates, dead-code restarts)."""

    k: int
    dim: int
    decay: float = 0.99
    usage: torch.Tensor = field(init=False)
    sums: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.usage = torch.ones(self.k)
        self.sums = torch.zeros(self.k, self.dim)


def vq_train_step(model: Tokenizer, z: torch.Tensor, k: int, state: VQState,
                  restart: bool, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Quantise unit latents z (B,D,h,w) with straight-through gradients and update the codebook
    by EMA. Returns (quantised latents with ST gradient, commitment loss, stats)."""
    cb = model.codebook(k)
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()
    idx = (flat @ cb.t()).argmax(1)
    onehot = F.one_hot(idx, k).float()
    counts = onehot.sum(0)
    sums = onehot.t() @ flat
    state.usage.mul_(0.95).add_(counts, alpha=0.05)
    state.sums.mul_(state.decay).add_(sums, alpha=1 - state.decay)
    new_cb = l2norm(state.sums + 1e-6 * cb, 1)
    n_restart = 0
    if restart:
        dead = state.usage < 0.03  # fewer than ~1 use in 30 batches
        n_restart = int(dead.sum())
        if n_restart:
            pick = torch.randint(0, flat.shape[0], (n_restart,), generator=gen)
            new_cb[dead] = flat[pick]
            state.sums[dead] = flat[pick]
            state.usage[dead] = state.usage.mean()
    cb.copy_(new_cb)
    q = cb[idx].reshape(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
    commit = F.mse_loss(z, q.detach())
    zq = z + (q - z).detach()
    probs = counts / counts.sum()
    perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
    return zq, commit, {"perplexity": float(perplexity), "restarts": n_restart,
                        "used": int((counts > 0).sum())}
