"""Session 11 probe (before the decoder did it): a reduced file's realism detail drawn on the
token grid of the shown size, added to the upsampled r = 0 picture; metrics as the benchmark's.
Files from scripts/default_realism.py (out/s11files/).

    python scripts/texture_probe.py kodim03,kodim05 > out.jsonl
"""
import sys, json, numpy as np, torch
from PIL import Image
from tokcodec.codec import Codec
from tokcodec import container, resample, detail
from tokcodec.bench import score
torch.set_num_threads(1)
c = Codec()
tok = c.model.tokenizer
for n in sys.argv[1].split(","):
    img = Image.open(f"../shared/data/kodak/{n}.png").convert("RGB")
    W, H = img.size
    for t in (0.005, 0.01):
        data = open(f"out/s11files/{n}_{t}.tkc", "rb").read()
        cc = c.read(data); hd = cc.header
        tokens, keep = c.decode_tokens(cc)
        full = c.generate(tokens, keep, hd.codebook, 1, 0.0, hd.coder_id) if not keep.all() else tokens
        base = np.asarray(c.decode(data, seed=1, realism=0.0)).astype(np.float32) / 255
        GH, GW = 2 * -(-H // 32), 2 * -(-W // 32)
        rows = np.minimum(((np.arange(GH) * 16 + 8) * hd.height / H) // 16, full.shape[0] - 1).astype(int)
        cols = np.minimum(((np.arange(GW) * 16 + 8) * hd.width / W) // 16, full.shape[1] - 1).astype(int)
        up = torch.from_numpy(full[rows][:, cols])[None]
        for r in (0.3, 0.6):
            rd, sigma = detail.knob(r)
            with torch.no_grad():
                x0 = tok.decode(up, hd.codebook, 0.0, fidelity=hd.decoder)
                xr = tok.decode(up, hd.codebook, rd, torch.Generator().manual_seed(1))
            d = (xr - x0).float()
            band = (d - detail.blur(d, sigma))[0].permute(1, 2, 0).numpy()[:H, :W]
            out = np.clip(base + band, 0, 1)
            out = Image.fromarray((out * 255 + 0.5).astype(np.uint8))
            m = score(img, out, True)
            print(json.dumps(dict(image=n, target=t, r=r, how="display", **{k: float(v) for k, v in m.items()})), flush=True)
