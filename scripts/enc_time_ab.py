"""Encode time A/B in one process: nearest against rd tokens, fresh analysis per encode, at 0.01
and 0.03 bpp, two runs each (docs/rdo.md).

    python scripts/enc_time_ab.py kodim05 [threads]
"""
import sys, time, torch
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
from PIL import Image
from tokcodec.codec import get_codec
c = get_codec()
im = Image.open(f"../shared/data/kodak/{sys.argv[1]}.png").convert("RGB")
for rep in range(2):
    for rule in ("nearest", "rd"):
        for bpp in (0.01, 0.03):
            t = time.time(); r = c.encode(im, bpp, tokens=rule); dt = time.time() - t
            print(rule, bpp, f"{dt:.1f}s", len(r.data), flush=True)
