"""Rate control at given targets on Kodak-size images: bytes, PSNR and colour error (CIEDE2000
of 16x box-downscaled images) per image, decoded at realism 0, as JSON lines (quicker than the
full benchmark when only the encoder changed).

    python scripts/rate_check.py 0.005,0.01 kodim01,kodim02 out.json [--data ../shared/data/kodak]
        [--tokens rd|nearest] [--scale S] [--effort full|fast] [--fresh]

--fresh analyses the photo again for each target (enc_s is then a whole encode's time; by
default the targets of one photo share its analyses, as a caller encoding it twice would).
"""
import sys, json, numpy as np, time, torch
from PIL import Image
from tokcodec.codec import Codec
from tokcodec import correction
from tokcodec.metrics import colour_error, compare
torch.set_num_threads(1)
c = Codec()
targets = [float(x) for x in sys.argv[1].split(",")]; names = sys.argv[2].split(","); out = sys.argv[3]
DATA = sys.argv[sys.argv.index("--data") + 1] if "--data" in sys.argv else "../shared/data/kodak"
TOKENS = sys.argv[sys.argv.index("--tokens") + 1] if "--tokens" in sys.argv else "rd"
SCALE = float(sys.argv[sys.argv.index("--scale") + 1]) if "--scale" in sys.argv else None  # None: rate control's choice
EFFORT = sys.argv[sys.argv.index("--effort") + 1] if "--effort" in sys.argv else "full"
FRESH = "--fresh" in sys.argv
c.encode(Image.new("RGB", (256, 192), (90, 120, 150)), 0.03, effort=EFFORT)  # loads what is lazy
rows=[]
for n in names:
    img = Image.open(f"{DATA}/{n}.png").convert("RGB"); rgb=np.asarray(img)
    p = c.prepare(img, tokens=TOKENS, effort=EFFORT)
    for t in targets:
        t0=time.time()
        if FRESH:
            p = c.prepare(img, tokens=TOKENS, effort=EFFORT)
        r = c.encode_prepared(p, int(t*rgb.shape[0]*rgb.shape[1]/8), scale=SCALE)
        dt=time.time()-t0
        dec = np.asarray(c.decode(r.data, realism=0.0))
        cor = correction.read_correction(c.read(r.data))
        mse=((dec.astype(float)-rgb)**2).mean()
        row=dict(image=n,target=t,bytes=len(r.data),psnr=10*np.log10(255**2/mse),de=colour_error(rgb,dec),
                 ms_ssim=compare(img, Image.fromarray(dec))["ms_ssim"],
                 setting=str(r.setting), coded=r.coded_size, grid=(cor.cell,cor.steps,getattr(cor,"transform",False)) if cor and cor.cell else None,
                 grid_bytes=len(correction.pack(cor)) if cor else 0, enc_s=dt)
        rows.append(row); print(json.dumps(row), flush=True)
json.dump(rows, open(out,"w"))
