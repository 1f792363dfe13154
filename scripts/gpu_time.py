"""Encode and decode times on one device with the model loaded once and warmed up (what a
long-running service or a batch job on a GPU sees), for two Kodak images at 0.03 and 0.01 bpp
and a 12-MP photo (the first image tiled to 3840x3072) at 0.03 bpp.

    python scripts/gpu_time.py cuda|cpu KODAK_DIR
"""
import sys
import time

import numpy as np
import torch
from PIL import Image

from tokcodec.codec import get_codec

dev, folder = sys.argv[1], sys.argv[2]
c = get_codec(None, dev)
sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
c.encode(Image.new("RGB", (256, 192), (90, 120, 150)), bpp=0.03)  # warm-up
imgs = {n: Image.open(f"{folder}/{n}.png").convert("RGB") for n in ("kodim01", "kodim23")}
imgs["12MP"] = Image.fromarray(np.tile(np.asarray(imgs["kodim01"]), (6, 5, 1))[:3072, :3840])
for n, img in imgs.items():
    for bpp in ((0.03,) if n == "12MP" else (0.03, 0.01)):
        t = time.perf_counter()
        data = c.encode(img, bpp=bpp).data
        sync()
        te = time.perf_counter() - t
        ts = []
        for _ in range(1 if n == "12MP" else 2):
            t = time.perf_counter()
            c.decode(data, 1)
            sync()
            ts.append(time.perf_counter() - t)
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if dev == "cuda" else 0.0
        print(f"{dev} {n} {bpp}: {len(data)} B, encode {te:.2f} s, decode "
              f"{' / '.join(f'{x:.2f}' for x in ts)} s, peak GPU {peak:.2f} GiB", flush=True)
