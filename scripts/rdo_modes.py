"""Token rules at fixed settings: nearest against rd tokens, no correction, realism 0, per image
and setting: bytes, PSNR gain, byte change (docs/rdo.md).

    python scripts/rdo_modes.py kodim23,kodim15 [threads]
"""
import sys, time, numpy as np, torch
from PIL import Image
from tokcodec.codec import get_codec
from tokcodec.metrics import compare
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
c = get_codec()
settings = [(16,"entire",None),(16,"checkerboard",None),(16,"edge",0.25),(16,"edge_more",0.5),(64,"entire",None),(64,"edge",0.5),(256,"edge",0.5)]
tot = {}
for name in sys.argv[1].split(","):
    im = Image.open(f"../shared/data/kodak/{name}.png").convert("RGB")
    an = {}
    for rule in ("nearest","rd"):
        t=time.time(); an[rule] = c.analyse(im, "rd", rule)
    line = name
    for k,m,q in settings:
        res = {}
        for rule in ("nearest","rd"):
            r = c.encode_analysed(an[rule], None, k, m, q, correct=False)
            img = c.decode(r.data, realism=0.0)
            mm = compare(im, img); res[rule] = (len(r.data), mm["psnr"], mm["ms_ssim"])
        dp = res["rd"][1]-res["nearest"][1]; db = res["rd"][0]/res["nearest"][0]-1
        tot.setdefault((k,m,q), []).append((dp, db))
        line += f" | {k}{m[:4]}{q or ''} {res['nearest'][0]}B {res['nearest'][1]:.2f} {dp:+.2f}dB {100*db:+.1f}%"
    print(line, flush=True)
for s,v in tot.items(): print(s, "mean dB %+.2f bytes %+.1f%%" % (np.mean([x[0] for x in v]), 100*np.mean([x[1] for x in v])))
