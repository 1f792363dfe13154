"""Realism on reduced-scale files: the 0.005 and 0.01 bpp files of Kodak images (kept in
out/s11files/), decoded at r = 0, 0.15, 0.3, 0.45 and 0.6, with the benchmark's metrics.

    python scripts/realism_scaled.py kodim03,kodim08 > out.jsonl
"""
import sys, os, json, numpy as np, torch
from PIL import Image
from tokcodec.codec import Codec
from tokcodec.bench import score as measure
torch.set_num_threads(1)
c = Codec()
names = sys.argv[1].split(","); targets=[0.005,0.01]; rs=[0,0.15,0.3,0.45,0.6]
os.makedirs("out/s11files", exist_ok=True)
for n in names:
    img = Image.open(f"../shared/data/kodak/{n}.png").convert("RGB")
    p = c.prepare(img)
    for t in targets:
        f = f"out/s11files/{n}_{t}.tkc"
        if not os.path.exists(f):
            open(f, "wb").write(c.encode_prepared(p, int(t*768*512/8)).data)
        data = open(f, "rb").read()
        for r in rs:
            out = c.decode(data, seed=1, realism=r)
            m = measure(img, out, True)
            print(json.dumps(dict(image=n, target=t, r=r, **{k: float(v) for k, v in m.items()})), flush=True)
