"""Issue 14, item 3: does a rate term (lambda x exact bits) in the token refinement buy rates
between rate control's settings more cheaply than the settings themselves?

For each image and setting: the exact file, then the kept tokens refined again (`refine`, six
steps, from the file's own tokens) with lambda = MULT x (pixel error / file bits), the bits of
every codeword at every kept position taken from the file's exact stage tables (contexts of
later stages held fixed, as `Codec.polish` does). Prints bytes, PSNR (fidelity decoder,
realism 0, no correction grid) and the share of tokens changed. Compare the PSNR lost per
e-fold of bytes saved with the slope between neighbouring settings.

    python scripts/lambda_probe.py kodim23,kodim05 256:entire:0,64:entire:0 1,2,3,4
"""
import sys
import time

import numpy as np
import torch
from PIL import Image

from tokcodec.codec import get_codec
from tokcodec.ratecontrol import Setting
from tokcodec.refine import pixel_error, refine

torch.set_num_threads(2)
DATA = sys.argv[sys.argv.index("--data") + 1] if "--data" in sys.argv else "../shared/data/kodak"
c = get_codec()


def psnr(a, b):
    return 10 * np.log10(255 ** 2 / np.mean((a.astype(float) - b.astype(float)) ** 2))


for name in sys.argv[1].split(","):
    a = c.analyse(Image.open(f"{DATA}/{name}.png"))
    rgb = a["rgb"]
    for s in [Setting(int(k), m, float(q)) for k, m, q in (x.split(":") for x in sys.argv[2].split(","))]:
        k = s.codebook
        r = c.exact(a, s)
        tokens = c.tokens_for(a, k)
        print(f"{name} K={k} {s.mode} q={s.quantile}: {len(r.data)} B {psnr(rgb, c._reconstruct(r, a)):.2f} dB", flush=True)
        _, keep = c._mask(a, s, tokens.shape)
        bits = np.zeros((tokens.size, k), dtype=np.float32)

        def step(pos, counts):
            cc = counts.double()
            bits[pos] = (-torch.log2(cc / cc.sum(1, keepdim=True))).numpy()
            return tokens.ravel()[pos]
        c._code_stages(tokens.shape, k, keep, step, a["counts"].setdefault(k, {}))
        tok = c.model.tokenizer
        dec, cb = tok.fidelity_decoder(c.model.fidelity), tok.codebook(k)
        target = c._target(a)
        per_bit = pixel_error(dec, cb, tokens, target, a["size"]) / (8 * len(r.data))
        for mult in [float(x) for x in sys.argv[3].split(",")]:
            t0 = time.time()
            new = np.where(keep, refine(dec, cb, tokens, target, a["size"], 6, keep, 0, bits, mult * per_bit), tokens)
            a2 = {**a, "tokens": {**a["tokens"], k: new}, "exact": {}, "estimated": {}, "reconstructed": {}}
            r2 = c.encode_setting(a2, s)
            print(f"   lambda x{mult}: {len(r2.data)} B {psnr(rgb, c._reconstruct(r2, a2)):.2f} dB, "
                  f"tokens changed {np.mean(new != tokens):.3f} ({time.time() - t0:.1f} s)", flush=True)
