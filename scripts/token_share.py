"""Share of positions where the rd token choice (refine.py) codes another codeword than the
nearest one, per codebook, every token kept, and what that does to the decoded PSNR (realism 0,
fidelity decoder) and to the exact bits of the tokens.

    python scripts/token_share.py [--data ../shared/data/kodak] [--limit N] [--out out.json]
"""
import argparse, json, time
from pathlib import Path
import numpy as np, torch
from PIL import Image
from tokcodec.codec import Codec, Setting
from tokcodec.metrics import psnr, image_to_tensor

ap = argparse.ArgumentParser()
ap.add_argument("--data", default="../shared/data/kodak"); ap.add_argument("--limit", type=int, default=0)
ap.add_argument("--out", default=None); ap.add_argument("--threads", type=int, default=1)
args = ap.parse_args()
torch.set_num_threads(args.threads)
c = Codec()
files = sorted(Path(args.data).glob("*.png"))[:args.limit or None]
rows = []
for f in files:
    img = Image.open(f).convert("RGB"); ref = image_to_tensor(img)
    an, ar = c.analyse(img, tokens="nearest"), c.analyse(img, tokens="rd")
    for k in c.model.codebooks:
        t0 = time.time(); tr = c.tokens_for(ar, k); dt = time.time() - t0
        tn = c.tokens_for(an, k)
        out = {}
        for rule, a in (("nearest", an), ("rd", ar)):
            r = c.encode_setting(a, Setting(k, "entire"))
            out[rule] = (len(r.data), psnr(ref, image_to_tensor(c.decode(r.data, realism=0.0))))
        rows.append(dict(image=f.stem, k=k, changed=float((tr != tn).mean()), refine_s=dt,
                         bytes_nearest=out["nearest"][0], bytes_rd=out["rd"][0],
                         psnr_nearest=out["nearest"][1], psnr_rd=out["rd"][1]))
        print(json.dumps(rows[-1]), flush=True)
for k in c.model.codebooks:
    r = [x for x in rows if x["k"] == k]
    print(f"K={k}: {len(r)} images, changed {100 * np.mean([x['changed'] for x in r]):.1f}% of tokens, "
          f"PSNR {np.mean([x['psnr_nearest'] for x in r]):.2f} -> {np.mean([x['psnr_rd'] for x in r]):.2f} dB, "
          f"bytes {100 * (np.mean([x['bytes_rd'] / x['bytes_nearest'] for x in r]) - 1):+.1f}%, "
          f"refinement {np.median([x['refine_s'] for x in r]):.1f} s median")
if args.out:
    json.dump(rows, open(args.out, "w"))
