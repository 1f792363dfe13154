"""Compare fidelity decoders on whole images with every token kept (no rate control, no
correction): PSNR and colour error (CIEDE2000 of 16x box-downscaled images) per codebook.

    python scripts/decoder_check.py --data ../shared/data/kodak [--fidelity weights/fidelity.safetensors]

Decoder 0 is the base file's; the other is a `fid.`-prefixed file (weights/fidelity.safetensors
or a `train decoder` output). Weights v4's table in weights/README.md comes from this script.
"""

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from tokcodec.metrics import colour_error  # noqa: E402
from tokcodec.train.decoder import load_decoder_file, load_tokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--weights", default="weights/tokc.safetensors")
    ap.add_argument("--fidelity", default="weights/fidelity.safetensors")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok, _ = load_tokenizer(args.weights)
    tok.eval()
    new = copy.deepcopy(tok.decoder)
    load_decoder_file(Path(args.fidelity), new)
    res: dict = {}
    files = sorted(p for p in Path(args.data).iterdir() if p.suffix.lower() == ".png")
    for f in files:
        im = Image.open(f).convert("RGB")
        x = torch.from_numpy(np.array(im)).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            z = tok.encode_latent(x)
            for k in sorted(tok.cfg.codebooks):
                e = tok.embed(tok.quantize(z, k), k)
                for name, dec in (("decoder 0", tok.decoder), ("decoder 1", new)):
                    y = (dec(e).clamp(0, 1) * 255).round()
                    psnr = -10 * np.log10(float(((y / 255 - x) ** 2).mean()))
                    out = Image.fromarray(y[0].permute(1, 2, 0).byte().numpy())
                    res.setdefault((k, name), []).append((psnr, colour_error(im, out)))
        print(f.name, flush=True)
    print(f"{len(files)} images, every token kept")
    for (k, name), v in sorted(res.items()):
        p, c = np.mean(v, 0)
        print(f"K={k:5d} {name}: PSNR {p:.2f} dB, colour dE00 {c:.2f}")


if __name__ == "__main__":
    main()
