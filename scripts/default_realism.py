"""The 0.005 and 0.01 bpp files of Kodak images, encoded as the benchmark does (one prepare per
image, targets in order), decoded at the default realism and at r = 0 (or the realism values given), with the benchmark's
metrics, as JSON lines; files are kept in out/s11files/.

    python scripts/default_realism.py kodim01,kodim02 [default,0,1] > out.jsonl
"""
import sys, os, json, numpy as np, torch
from PIL import Image
from tokcodec.codec import Codec
from tokcodec.bench import score
torch.set_num_threads(1)
c = Codec()
os.makedirs("out/s11files", exist_ok=True)
for n in sys.argv[1].split(","):
    img = Image.open(f"../shared/data/kodak/{n}.png").convert("RGB")
    p = c.prepare(img)
    for t in (0.005, 0.01):
        f = f"out/s11files/{n}_{t}.tkc"
        if not os.path.exists(f):
            open(f, "wb").write(c.encode_prepared(p, int(t * 768 * 512 / 8)).data)
        data = open(f, "rb").read()
        for r in [float(x) if x != 'default' else None for x in (sys.argv[2] if len(sys.argv) > 2 else 'default,0').split(',')]:
            out = c.decode(data, seed=1, realism=r)
            m = score(img, out, True)
            print(json.dumps(dict(image=n, target=t, r=r, bytes=len(data), **{k: float(v) for k, v in m.items()})), flush=True)
