"""Fit rate control's quality model: decoded PSNR per codebook, mask mode and edge share.

    python -m tokcodec.train quality --data ../shared/data/train [--limit 24] [--weights W] [--tokens rd]

Encodes a sample of training photos (never Kodak) at every setting on a grid, decodes at
temperature 0 and realism 0 (with the fidelity decoder the files name) and prints the mean PSNR
table that `ratecontrol.QUALITY_BY_DECODER` holds for that token rule and decoder. Each row is made
non-decreasing in the edge share, which rate control's search relies on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ..codec import TOKEN_CHOICES, Codec
from ..ratecontrol import QUALITY_QUANTILES, Setting
from ..imageio import load_image
from ..metrics import image_to_tensor, psnr
from .data import list_images


def fit(args) -> None:
    torch.set_grad_enabled(False)
    codec = Codec(args.weights, args.device)
    files = list_images(Path(args.data), "train")
    files = files[::max(1, len(files) // args.limit)][:args.limit]
    table = {k: {"entire": [], "checkerboard": [], "edge": [], "edge_more": []} for k in codec.model.codebooks}
    for n, f in enumerate(files):
        img = load_image(f)
        ref = image_to_tensor(img)
        a = codec.analyse(img, tokens=args.tokens)
        for k in codec.model.codebooks:
            for mode in table[k]:
                qs = QUALITY_QUANTILES if mode in ("edge", "edge_more") else (0.0,)
                row = []
                for q in qs:
                    r = codec.encode_setting(a, Setting(k, mode, q))
                    row.append(psnr(ref, image_to_tensor(codec.decode(r.data, realism=0.0))))
                table[k][mode].append(row)
        print(f"{n + 1}/{len(files)} {f.name}", flush=True)
    out = {}
    for k, modes in table.items():
        out[k] = {}
        for mode, rows in modes.items():
            m = np.maximum.accumulate(np.mean(rows, 0))
            out[k][mode] = [round(float(x), 2) for x in m]
    print(json.dumps({"model_id": codec.model.model_id.hex(), "decoder": codec.model.fidelity,
                      "tokens": args.tokens, "images": len(files), "table": out}))


def add_args(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("quality", help="fit rate control's quality table on training photos")
    q.add_argument("--data", required=True)
    q.add_argument("--limit", type=int, default=24)
    q.add_argument("--weights", default=None)
    q.add_argument("--device", default="auto")
    q.add_argument("--tokens", choices=TOKEN_CHOICES, default="rd", help="token rule (Codec.analyse)")
    q.set_defaults(func=fit)
