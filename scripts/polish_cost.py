"""Polish variants (rounds, steps) on a few images: PSNR/MS-SSIM/bytes and encode time (1 thread).
python scripts/polish_cost.py TARGETS IMAGES R:S,R:S,..."""
import sys, json, time, numpy as np, torch
from PIL import Image
from tokcodec.codec import Codec
from tokcodec import codec as cm
from tokcodec.metrics import compare
torch.set_num_threads(1)
c = Codec()
targets = [float(x) for x in sys.argv[1].split(",")]; names = sys.argv[2].split(",")
variants = [tuple(int(v) for v in x.split(":")) for x in sys.argv[3].split(",")]
for n in names:
    img = Image.open(f"../shared/data/kodak/{n}.png").convert("RGB"); rgb = np.asarray(img)
    a = c.analyse(img)
    for t in targets:
        budget = int(t * rgb.shape[0] * rgb.shape[1] / 8)
        for R, S in variants:
            cm.POLISH_ROUNDS, cm.POLISH_STEPS = R, S
            a2 = {k: v for k, v in a.items() if k not in ("exact", "reconstructed")}  # fresh trial caches, shared tables
            t0 = time.perf_counter(); r = c.encode_analysed(a2, budget); dt = time.perf_counter() - t0
            dec = c.decode(r.data, realism=0.0); m = compare(img, dec)
            print(json.dumps(dict(image=n, target=t, R=R, S=S, bytes=len(r.data), psnr=m["psnr"], ms=m["ms_ssim"], s=dt)), flush=True)
