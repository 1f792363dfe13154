"""Where encode and decode spend their time (docs/performance.md): cProfile of tokc's main steps on
one Kodak image, one thread.   .venv/bin/python scripts/profile_codec.py [IMAGE]"""
import cProfile, pstats, io, sys, time, torch
from PIL import Image
torch.set_num_threads(1)
from tokcodec.codec import get_codec
c = get_codec()
im = Image.open(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/kodak/kodim23.png").convert("RGB")
c.encode(im, 0.03)  # warm up
KEYS = {"analyse": "analyse", "prior passes (exact)": "counts", "float-twin size estimates": "estimate_bytes",
        "token encodes (exact)": "encode_setting", "correction: reconstruct (generate+render)": "reconstruct",
        "correction: score grids": "quality", "generate (dropped tokens)": "generate", "render (pixel decoder)": "render",
        "range decode": "decode_tokens", "correction apply": "finish_pixels"}
def run(label, fn):
    pr = cProfile.Profile(); t0 = time.perf_counter(); pr.enable(); fn(); pr.disable(); total = time.perf_counter() - t0
    st = pstats.Stats(pr)
    out = {}
    for (file, line, name), (cc, nc, tt, ct, callers) in st.stats.items():
        for k, v in KEYS.items():
            if name == v and "tokcodec" in file:
                out[k] = out.get(k, 0) + ct
    print(f"{label}: total {total:.2f} s | " + " | ".join(f"{k} {v:.2f}" for k, v in out.items()), flush=True)
for t in (0.01, 0.03):
    run(f"encode {t}", lambda: c.encode(im, t))
    run(f"encode {t} no correction", lambda: c.encode(im, t, correct=False))
data = c.encode(im, 0.01).data
run("decode 0.01 r=0", lambda: c.decode(data, realism=0.0))
run("decode 0.01 r=0.6", lambda: c.decode(data, realism=0.6))
