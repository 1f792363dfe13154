"""Encode time A/B in one process, fresh analysis per encode, two runs each (docs/rdo.md):
nearest tokens, rd tokens without the final polish (POLISH_ROUNDS = 0), and rd tokens as
shipped (with the polish), at 0.005, 0.01 and 0.03 bpp.

    python scripts/enc_time_ab.py kodim05 [threads] [targets]
"""
import sys, time, torch
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
from PIL import Image
from tokcodec import codec as codec_module
from tokcodec.codec import get_codec
c = get_codec()
im = Image.open(f"../shared/data/kodak/{sys.argv[1]}.png").convert("RGB")
targets = [float(x) for x in (sys.argv[3] if len(sys.argv) > 3 else "0.005,0.01,0.03").split(",")]
rounds = codec_module.POLISH_ROUNDS
for rep in range(2):
    for rule, polish in (("nearest", 0), ("rd", 0), ("rd", rounds)):
        codec_module.POLISH_ROUNDS = polish
        for bpp in targets:
            t = time.time(); r = c.encode(im, bpp, tokens=rule); dt = time.time() - t
            print(rule, "polish" if polish else "-", bpp, f"{dt:.1f}s", len(r.data), flush=True)
