"""Training images held in memory as uint8 arrays, served as random crops with flips.

A fixed share of the training folder is held out as a second test set (`is_holdout`): about
1 photo in 32, chosen by a hash of the file name so the split never depends on the folder's
order or size. Training code skips those photos from session 3 on (the tokenizer and prior of
weights v2 were trained before the split and did see them; nothing trained since has).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def is_holdout(path: Path) -> bool:
    """True for the held-out test photos: first byte of SHA-256 of the file name below 8."""
    return hashlib.sha256(Path(path).name.encode()).digest()[0] < 8


def list_images(folder: Path, split: str = "all") -> list[Path]:
    """Image files under `folder`: split 'all', 'train' (without the held-out photos) or 'holdout'."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in EXTS)
    if split == "train":
        files = [p for p in files if not is_holdout(p)]
    elif split == "holdout":
        files = [p for p in files if is_holdout(p)]
    if not files:
        raise SystemExit(f"error: no images found in {folder}")
    return files


def load_rgb(path: Path, min_side: int) -> np.ndarray | None:
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            if min(im.size) < min_side:
                return None
            return np.asarray(im, dtype=np.uint8)
    except OSError:
        return None


class CropSampler:
    """Random crops of `size` px with horizontal flips from images preloaded in memory."""

    def __init__(self, folder: Path, size: int, seed: int, rank: int = 0, world: int = 1,
                 limit: int | None = None, split: str = "all"):
        files = list_images(folder, split)[rank::world]
        if limit:
            files = files[:limit]
        self.images = [a for a in (load_rgb(f, size) for f in files) if a is not None]
        if not self.images:
            raise SystemExit(f"error: no image in {folder} is at least {size}px on its short side")
        self.size = size
        self.rng = np.random.default_rng(seed + rank)

    def batch(self, n: int) -> torch.Tensor:
        s = self.size
        out = np.empty((n, s, s, 3), dtype=np.uint8)
        for i in range(n):
            img = self.images[self.rng.integers(len(self.images))]
            y = self.rng.integers(img.shape[0] - s + 1)
            x = self.rng.integers(img.shape[1] - s + 1)
            crop = img[y:y + s, x:x + s]
            out[i] = crop[:, ::-1] if self.rng.random() < 0.5 else crop
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255)
