"""Issue 14, item 2: rank the 2x2-token blocks an edge mode keeps by pixel error saved per bit
(a rate-distortion ratio) instead of by pixel error saved (the shipped "rd" ranking, which takes
every block as costing the same). A block's bits are the float twin's estimate of its extra
tokens (those beyond the mode's base pattern) when every token is coded, plus FLOOR bits.
Runs rate control with the patched ranking and prints rate_check-style JSON lines; compare
them with the benchmark's rows (docs/benchmarks.json, codec "tokc r=0").

    python scripts/block_ratio_probe.py 0.005,0.02 kodim02,kodim07 [FLOOR]
"""
import json
import sys

import numpy as np
import torch
from PIL import Image

from tokcodec import mask
from tokcodec.codec import Codec
from tokcodec.metrics import colour_error, compare
from tokcodec.ratecontrol import Setting

torch.set_num_threads(1)
FLOOR = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
c = Codec()
shipped = Codec.block_scores


def position_bits(self, a, k):
    cache = a.setdefault("position_bits", {})
    if k not in cache:
        tokens = self.tokens_for(a, k)
        out = np.zeros(tokens.size)
        orig_step = None  # estimate_bytes has no per-position output: rebuild it from its stage loop
        twin = self.model.prior.float_twin()
        flat = tokens.ravel()

        def token_bits(ctx, k_, pos):
            where = np.zeros(ctx.size, dtype=bool)
            where[pos] = True
            logits = twin(torch.from_numpy(ctx)[None], k_, torch.from_numpy(where.reshape(ctx.shape))[None])
            p = torch.log_softmax(logits.float(), -1).gather(1, torch.from_numpy(flat[pos])[:, None])[:, 0]
            return -p / np.log(2)

        def step(pos, b):
            out[pos] = b.numpy()
            return flat[pos]
        with torch.no_grad():
            self._code_stages(tokens.shape, k, np.ones(tokens.shape, bool), step, {}, token_bits)
        cache[k] = out.reshape(tokens.shape)
    return cache[k]


def block_scores(self, a, k, mode):
    saving = shipped(self, a, k, mode)
    if saving is a["strength"]:
        return saving
    key = ("ratio", k, mode)
    scores = a.setdefault("block_scores", {})
    if key not in scores:
        h, w = self.tokens_for(a, k).shape
        base = mask.keep_mask(mode, (h, w), np.zeros((h // 2, w // 2), dtype=bool))
        bits = (position_bits(self, a, k) * ~base).reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3))
        scores[key] = saving / (bits + FLOOR)
    return scores[key]


Codec.block_scores = block_scores
for n in sys.argv[2].split(","):
    img = Image.open(f"../shared/data/kodak/{n}.png").convert("RGB")
    rgb = np.asarray(img)
    p = c.prepare(img)
    for t in [float(x) for x in sys.argv[1].split(",")]:
        r = c.encode_prepared(p, int(t * rgb.shape[0] * rgb.shape[1] / 8))
        dec = np.asarray(c.decode(r.data, realism=0.0))
        mse = ((dec.astype(float) - rgb) ** 2).mean()
        print(json.dumps(dict(image=n, target=t, bytes=len(r.data), psnr=10 * np.log10(255 ** 2 / mse),
                              de=colour_error(rgb, dec), ms_ssim=compare(img, Image.fromarray(dec))["ms_ssim"],
                              setting=str(r.setting), enc_s=0.0)), flush=True)
