"""Make the crop folders `python -m tokcodec.train decoder` trains on (`make train-decoder`).

    python scripts/decoder_crops.py --data ../shared/data/train --out runs/decoder-crops [--mb 29]

train/: one random 256-px crop (WebP, quality 85) from each training photo (never the held-out
ones), in a fixed shuffled order, until --mb megabytes: compressed so that the folder can travel
to a lent GPU with the repository (whose transfers are capped at 64 MiB). val/: the centre
256-px crop of each held-out photo (WebP, quality 95). Weights v4's decoder 1 was trained on
the output of this script with --mb 29 (1,945 crops; 105 validation crops).
"""

import argparse
import io
import random
import sys
from pathlib import Path

from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from tokcodec.train.data import list_images  # noqa: E402

SIZE = 256


def load(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", default="runs/decoder-crops")
    ap.add_argument("--mb", type=float, default=29)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "val").mkdir(parents=True, exist_ok=True)
    n = 0
    for f in list_images(Path(args.data), "holdout"):
        im = load(f)
        if min(im.size) < SIZE:
            continue
        x, y = (im.width - SIZE) // 2, (im.height - SIZE) // 2
        im.crop((x, y, x + SIZE, y + SIZE)).save(out / "val" / f"{n:04d}.webp", "WEBP", quality=95)
        n += 1
    files = list_images(Path(args.data), "train")
    rng = random.Random(args.seed)
    rng.shuffle(files)
    total, m, budget = 0, 0, int(args.mb * 1e6)
    for f in files:
        im = load(f)
        if min(im.size) < SIZE:
            continue
        x, y = rng.randrange(im.width - SIZE + 1), rng.randrange(im.height - SIZE + 1)
        b = io.BytesIO()
        im.crop((x, y, x + SIZE, y + SIZE)).save(b, "WEBP", quality=85)
        if total + len(b.getvalue()) > budget:
            break
        (out / "train" / f"{m:05d}.webp").write_bytes(b.getvalue())
        total, m = total + len(b.getvalue()), m + 1
    print(f"{out}: {m} training crops ({total / 1e6:.1f} MB), {n} validation crops")


if __name__ == "__main__":
    main()
