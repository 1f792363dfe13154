"""Probe for issue 14 (RDO token choice): per coding stage, each kept token becomes the codeword,
among its 4 nearest, minimising latent distance + lambda * bits under the exact prior's table
for that stage (later stages see the chosen tokens). Prints bytes (information content) and
decoded PSNR / MS-SSIM (temperature 0, realism 0, no correction) per setting and lambda, to
compare against the nearest-codeword settings' own rate-distortion curve.
    .venv/bin/python scripts/rdo_probe.py kodim23,kodim15"""
import sys, numpy as np, torch
from PIL import Image
from tokcodec.codec import get_codec, Setting
from tokcodec import entropy
from tokcodec.metrics import compare
torch.set_num_threads(1)
c = get_codec()
def rdo_encode(a, s, lam, ncand=4):
    k = s.codebook
    tokens = c.tokens_for(a, k); grid = tokens.shape
    blocks, keep = c._mask(a, s, grid)
    z = a["z"][0].float()  # (D,h,w)
    cb = c.model.tokenizer.codebook(k).float()
    sim = torch.einsum("dhw,kd->hwk", z, cb).reshape(-1, k)
    dist = (2 - 2 * sim).numpy()  # squared distance of unit vectors
    order = np.argsort(dist, 1)[:, :ncand]
    allowed = np.full(dist.shape, np.inf); np.put_along_axis(allowed, order, 0.0, 1)
    chosen = tokens.ravel().copy()
    bits = [0.0]
    def step(pos, counts):
        cnt = counts.numpy().astype(np.float64)
        b = -np.log2(cnt / cnt.sum(1, keepdims=True))
        J = dist[pos] + lam * b + allowed[pos]
        sym = J.argmin(1)
        bits[0] += b[np.arange(len(pos)), sym].sum()
        chosen[pos] = sym
        return sym
    c._code_stages(grid, k, keep, step, a.setdefault("rdo_cache", {}).setdefault(k, {}))
    full = chosen.reshape(grid)
    full = c.generate(full, keep, k, 0, 0.0) if not keep.all() else full
    img = c.render(full, k, a["size"], 0.0, 0)
    return bits[0] / 8, img, (chosen != tokens.ravel()).mean()
for name in sys.argv[1].split(","):
    im = Image.open(f"../shared/data/kodak/{name}.png").convert("RGB")
    a = c.analyse(im)
    for s in [Setting(16, "entire"), Setting(16, "edge", 0.3), Setting(64, "entire"), Setting(64, "edge", 0.5)]:
        line = f"{name} {s.codebook}/{s.mode}/{s.quantile}"
        for lam in (0.0, 0.02, 0.05, 0.1, 0.2):
            by, img, ch = rdo_encode(a, s, lam)
            m = compare(im, img)
            line += f" | l{lam}: {by:.0f}B {m['psnr']:.2f} {m['ms_ssim']:.4f} ch{ch:.2f}"
        print(line, flush=True)
