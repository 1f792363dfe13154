"""cProfile of one whole encode (analysis, scale search and rate control; two threads), after a
warm-up encode of the same image at 0.02 bpp loads what is lazy (docs/performance.md, session 13).

    python scripts/profile_encode.py kodim05 0.03
"""
import cProfile
import pstats
import sys

import torch
from PIL import Image

from tokcodec.codec import Codec

torch.set_num_threads(2)
c = Codec()
img = Image.open(f"../shared/data/kodak/{sys.argv[1]}.png").convert("RGB")
c.encode(img, bpp=0.02)
pr = cProfile.Profile()
pr.enable()
c.encode(img, bpp=float(sys.argv[2]))
pr.disable()
pstats.Stats(pr).sort_stats("cumulative").print_stats(45)
