"""A tiny random model for tests: same code paths as the shipped one, made in milliseconds."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from tokcodec.prior import Prior, PriorConfig, quantize
from tokcodec.tokenizer import Tokenizer, TokenizerConfig
from tokcodec.weights import PRIOR_FILENAME, bitstream_tensors, fidelity_decoder_id, model_id, save, save_decoder, save_prior

TOK_CFG = TokenizerConfig(code_dim=4, widths=(8, 8, 16), enc_blocks=(1, 1, 1), dec_blocks=(1, 1, 1),
                          codebooks=(64, 16))
PRIOR_CFG = PriorConfig(dim=16, depth=2, heads=2, mlp=32, window=4, codebooks=(64, 16))
SHALLOW = PriorConfig(**{**PRIOR_CFG.to_dict(), "depth": 1})


def make_weights(path, seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    tok = Tokenizer(TOK_CFG)
    prior = Prior(PRIOR_CFG)
    for blk in prior.blocks:  # non-trivial relative bias, so position handling is exercised
        blk.rel.data.normal_(0, 0.5)
    return save(path, tok, quantize(prior), PRIOR_CFG, {"note": "random test model"})


def make_prior(folder, base=None, seed: int = 1, cfg: PriorConfig = SHALLOW) -> bytes:
    """A random prior file (spec section 6) in `folder`, made for the base file there (or the
    one at `base`); returns its prior-file id."""
    from safetensors.torch import load_file
    tensors = load_file(str(base if base is not None else folder / "tokc.safetensors"))
    torch.manual_seed(seed)
    prior = Prior(cfg)
    for blk in prior.blocks:  # non-trivial relative bias, as in make_weights
        blk.rel.data.normal_(0, 0.5)
    return save_prior(folder / PRIOR_FILENAME, quantize(prior), cfg, tensors, {"note": "random test prior"})


def photo(w: int = 96, h: int = 64, seed: int = 0) -> Image.Image:
    """A synthetic image with smooth gradients, edges and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 128 + 100 * np.sin(x / 9.0)
    g = 128 + 100 * np.cos(y / 7.0)
    b = np.where((x - w / 2) ** 2 + (y - h / 2) ** 2 < (min(w, h) / 3) ** 2, 230.0, 30.0)
    arr = np.stack([r, g, b], -1) + rng.normal(0, 8, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_decoder(folder, seed: int = 0, model: bytes | None = None) -> None:
    """A realism-conditioned decoder file for the tiny model in `folder` (FiLM and noise
    weights non-zero, so realism changes the pixels)."""
    from safetensors.torch import load_file
    torch.manual_seed(seed)
    base = load_file(str(folder / "tokc.safetensors"))
    tok = Tokenizer(TokenizerConfig(**{**TOK_CFG.to_dict(), "realism_dim": 8}))
    tok.load_state_dict({k[4:]: v.float() for k, v in base.items() if k.startswith("tok.")}, strict=False)
    for name, p in tok.decoder.named_parameters():
        if "film" in name or "noise_scale" in name or name.startswith("delta."):
            p.data.normal_(0, 0.3 if not name.startswith("delta.") else 0.05)
    if model is None:
        model = model_id(bitstream_tensors(base))
    save_decoder(folder / "decoder.safetensors", tok.decoder, tok.cfg, model, fidelity_decoder_id(base),
                 {"note": "random test decoder"})


def make_fidelity(folder, number: int = 1, seed: int = 0, model: bytes | None = None) -> None:
    """A newer fidelity decoder file (random weights) for the tiny model in `folder`."""
    from safetensors.torch import load_file

    from tokcodec.tokenizer import Decoder
    from tokcodec.weights import save_fidelity
    torch.manual_seed(seed)
    dec = Decoder(TOK_CFG)
    if model is None:
        model = model_id(bitstream_tensors(load_file(str(folder / "tokc.safetensors"))))
    save_fidelity(folder / "fidelity.safetensors", dec, number, model, {"note": "random test decoder"})
