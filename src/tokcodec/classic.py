"""Classic codecs for the benchmark: Pillow's (JPEG, WebP, AVIF, JPEG XL) and VVC (H.266,
VVenC/VVdeC command-line apps), each usable at full size or downscaled before coding and
upscaled after decoding. The product never needs any of this.

What a file costs (`Classic.size`):
- Pillow formats: the file Pillow writes (its own header carries the coded size).
- VVC: the raw bitstream (`.266`, one intra frame) plus 4 bytes for the width and height
  (2 bytes each), which a container would need to crop the 8-aligned coded picture.
- A downscaled variant adds 4 bytes more for the output width and height.

VVC input is 8-bit YUV 4:2:0 (full-range BT.601, chroma averaged over 2x2 pixels); VVenC codes
it at its default 10-bit internal depth and VVdeC's 10-bit output is rounded back to 8 bits;
chroma is upsampled by repetition.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
VVC_CACHE = ROOT / ".cache" / "vvc" / "bin"
VVC_PRESET = "medium"
BENCH_CACHE = ROOT / ".cache" / "bench-vvc"


def find_vvc() -> tuple[str, str] | None:
    """(vvencapp, vvdecapp) from $VVENC/$VVDEC, PATH or the `make vvc` cache; None if absent."""
    enc = os.environ.get("VVENC") or shutil.which("vvencapp") or (VVC_CACHE / "vvencapp")
    dec = os.environ.get("VVDEC") or shutil.which("vvdecapp") or (VVC_CACHE / "vvdecapp")
    if Path(enc).is_file() and Path(dec).is_file():
        return str(enc), str(dec)
    return None


def rgb_to_yuv420(img: Image.Image) -> tuple[bytes, int, int]:
    """RGB -> planar 8-bit YUV 4:2:0 (full-range BT.601), edge-padded to multiples of 8."""
    a = np.asarray(img.convert("RGB"), dtype=np.float64)
    h, w = a.shape[:2]
    ph, pw = -h % 8, -w % 8
    a = np.pad(a, ((0, ph), (0, pw), (0, 0)), mode="edge")
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    u = 128 + (b - y) * 0.564
    v = 128 + (r - y) * 0.713
    H, W = y.shape

    def sub(c):
        return c.reshape(H // 2, 2, W // 2, 2).mean((1, 3))

    planes = [np.clip(np.round(p), 0, 255).astype(np.uint8) for p in (y, sub(u), sub(v))]
    return b"".join(p.tobytes() for p in planes), W, H


def yuv420_to_rgb(data: bytes, w: int, h: int) -> Image.Image:
    n = w * h
    y = np.frombuffer(data, np.uint8, n).reshape(h, w).astype(np.float64)
    u = np.frombuffer(data, np.uint8, n // 4, n).reshape(h // 2, w // 2).astype(np.float64) - 128
    v = np.frombuffer(data, np.uint8, n // 4, n + n // 4).reshape(h // 2, w // 2).astype(np.float64) - 128
    u = u.repeat(2, 0).repeat(2, 1)
    v = v.repeat(2, 0).repeat(2, 1)
    r = y + v / 0.713
    b = y + u / 0.564
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    rgb = np.clip(np.round(np.stack([r, g, b], -1)), 0, 255).astype(np.uint8)
    return Image.fromarray(rgb)


@dataclass
class Classic:
    """A codec with an integer quality knob: `qualities` ordered from smallest file to largest."""

    name: str
    qualities: list[int]
    encode_fn: Callable[[Image.Image, int], bytes]
    decode_fn: Callable[[bytes], Image.Image]
    scale: int = 1  # 1, 2 or 4: code at 1/scale of the size, Lanczos down and up
    header_bytes: int = 0  # bytes a container would add (see the module docstring)
    cache: dict = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        return self.name if self.scale == 1 else f"{self.name} 1/{self.scale}"

    def _small(self, img: Image.Image) -> Image.Image:
        if self.scale == 1:
            return img
        w, h = img.size
        return img.resize((max(1, round(w / self.scale)), max(1, round(h / self.scale))), Image.LANCZOS)

    def encode(self, img: Image.Image, q: int) -> bytes:
        key = (hashlib.sha1(img.tobytes()).hexdigest(), img.size, q)
        if key not in self.cache:
            self.cache[key] = self.encode_fn(self._small(img), q)
        return self.cache[key]

    def size(self, data: bytes) -> int:
        return len(data) + self.header_bytes + (4 if self.scale > 1 else 0)

    def decode(self, data: bytes, size: tuple[int, int]) -> Image.Image:
        out = self.decode_fn(data)
        return out if out.size == size else out.resize(size, Image.LANCZOS)

    def best_under(self, img: Image.Image, budget: int) -> tuple[bytes, int] | None:
        """Highest quality whose counted size is at or under `budget` (binary search), or None."""
        lo, hi, best = 0, len(self.qualities) - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            data = self.encode(img, self.qualities[mid])
            if self.size(data) <= budget:
                best, lo = (data, self.qualities[mid]), mid + 1
            else:
                hi = mid - 1
        return best


def _pillow(fmt: str, opts: Callable[[int], dict]):
    def enc(img, q):
        buf = io.BytesIO()
        img.save(buf, format=fmt, **opts(q))
        return buf.getvalue()

    def dec(data):
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    return enc, dec


def vvenc_command(vvenc: str, src: Path, w: int, h: int, qp: int, out: Path, preset: str = VVC_PRESET,
                  threads: int = 1) -> list[str]:
    """vvencapp's arguments: one intra frame of 8-bit YUV 4:2:0 (w x h) at `qp`."""
    return [vvenc, "-i", str(src), "-s", f"{w}x{h}", "-c", "yuv420", "-r", "1", "-f", "1",
            "--preset", preset, "-q", str(qp), "-t", str(threads), "-o", str(out)]


def vvdec_command(vvdec: str, bits: Path, out: Path, threads: int = 1) -> list[str]:
    """vvdecapp's arguments: decode `bits` to raw YUV."""
    return [vvdec, "-b", str(bits), "-o", str(out), "-t", str(threads), "-v", "1"]


def _vvc(exes: tuple[str, str]):
    vvenc, vvdec = exes

    def enc(img, qp):
        yuv, w, h = rgb_to_yuv420(img)
        key = hashlib.sha1(yuv + f"{w}x{h}|{qp}|{VVC_PRESET}".encode()).hexdigest()
        cached = BENCH_CACHE / f"{key}.266"
        iw, ih = img.size
        if cached.is_file():  # encodes are deterministic: reruns of the benchmark reuse them
            return iw.to_bytes(2, "big") + ih.to_bytes(2, "big") + cached.read_bytes()
        with tempfile.TemporaryDirectory() as d:
            src, out = Path(d) / "in.yuv", Path(d) / "out.266"
            src.write_bytes(yuv)
            subprocess.run(vvenc_command(vvenc, src, w, h, qp, out), check=True, capture_output=True)
            bits = out.read_bytes()
        BENCH_CACHE.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(bits)
        return iw.to_bytes(2, "big") + ih.to_bytes(2, "big") + bits  # the 4 counted header bytes

    def dec(data):
        iw, ih = int.from_bytes(data[:2], "big"), int.from_bytes(data[2:4], "big")
        w, h = iw + (-iw % 8), ih + (-ih % 8)
        with tempfile.TemporaryDirectory() as d:
            src, out = Path(d) / "in.266", Path(d) / "out.yuv"
            src.write_bytes(data[4:])
            subprocess.run(vvdec_command(vvdec, src, out), check=True, capture_output=True)
            raw = out.read_bytes()
        if len(raw) == 3 * w * h:  # written at the 10-bit internal depth, 2 bytes a sample
            raw = ((np.frombuffer(raw, "<u2").astype(np.int32) + 2) >> 2).clip(0, 255).astype(np.uint8).tobytes()
        return yuv420_to_rgb(raw, w, h).crop((0, 0, iw, ih))
    return enc, dec


def codecs(scales=(1, 2, 4), names: set[str] | None = None) -> tuple[list[Classic], list[str]]:
    """Available classic codecs at each scale, and notes on those that are absent."""
    notes, base = [], []
    try:
        import pillow_jxl  # noqa: F401 - registers JXL
    except ImportError:
        pass
    for name, fmt, qs, opts in (
            ("JPEG", "JPEG", range(1, 96), lambda q: {"quality": q, "optimize": True}),
            ("WebP", "WEBP", range(0, 101), lambda q: {"quality": q, "method": 6}),
            ("AVIF", "AVIF", range(0, 101), lambda q: {"quality": q, "speed": 6}),
            ("JPEG XL", "JXL", range(0, 100), lambda q: {"quality": q, "effort": 7})):
        enc, dec = _pillow(fmt, opts)
        try:
            dec(enc(Image.new("RGB", (16, 16)), qs[-1]))
        except Exception:  # noqa: BLE001 - plugin missing
            notes.append(f"{name}: not available in this Pillow")
            continue
        base.append((name, list(qs), enc, dec, 0))
    exes = find_vvc()
    if exes:
        enc, dec = _vvc(exes)
        # QP 63 is the smallest file; the counted header is inside the returned bytes
        base.append(("VVC", list(range(63, -1, -1)), enc, dec, 0))
    else:
        notes.append("VVC: vvencapp/vvdecapp not found (set $VVENC/$VVDEC, put them on PATH, or run "
                     "`make vvc`); VVC rows skipped")
    out = []
    for name, qs, enc, dec, hb in base:
        if names and name not in names:
            continue
        for s in scales:
            out.append(Classic(name, qs, enc, dec, s, hb))
    return out, notes
