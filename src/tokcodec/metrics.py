"""Weight-free image quality metrics: PSNR, SSIM and MS-SSIM (Wang et al. 2003), in torch.

Images are float tensors in [0, 1], shape (B, 3, H, W) or (3, H, W). These are used both for
evaluation (on 0-255 RGB, the convention of the compression literature) and as training losses.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
import torch
import torch.nn.functional as F

MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _batch(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(0) if x.dim() == 3 else x


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB over all pixels and channels of 8-bit-quantised images in [0, 1]."""
    a = (a.clamp(0, 1) * 255).round()
    b = (b.clamp(0, 1) * 255).round()
    mse = float(((a.double() - b.double()) ** 2).mean())
    return 100.0 if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def _gauss(size: int = 11, sigma: float = 1.5, device=None, dtype=torch.float32) -> torch.Tensor:
    g = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(g ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _ssim_parts(x: torch.Tensor, y: torch.Tensor, win: torch.Tensor):
    c = x.shape[1]
    wh = win.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    wv = win.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(t):
        return F.conv2d(F.conv2d(t, wh, groups=c), wv, groups=c)

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    return (lum * cs).mean(dim=(1, 2, 3)), cs.mean(dim=(1, 2, 3))


def ms_ssim(x: torch.Tensor, y: torch.Tensor, scales: int = 5, win_size: int = 11) -> torch.Tensor:
    """MS-SSIM per image (B,). Uses as many of the 5 scales as the image size allows
    (a scale needs its side >= the window size)."""
    x, y = _batch(x), _batch(y)
    win = _gauss(win_size, 1.5, x.device, x.dtype)
    weights = list(MS_WEIGHTS[:scales])
    while len(weights) > 1 and min(x.shape[-2:]) < win_size * 2 ** (len(weights) - 1):
        weights.pop()
    w = torch.tensor(weights, device=x.device, dtype=x.dtype)
    w = w / w.sum()
    vals = []
    for i in range(len(weights)):
        s, cs = _ssim_parts(x, y, win)
        vals.append(s if i == len(weights) - 1 else cs)
        if i < len(weights) - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    stack = torch.stack(vals, 0).clamp_min(1e-6)
    return torch.prod(stack ** w.view(-1, 1), 0)


def image_to_tensor(img) -> torch.Tensor:
    """PIL RGB image -> float tensor (3, H, W) in [0, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def hf_energy(img) -> float:
    """Fine-detail energy of a PIL image: power of its luma (BT.601 weights, 0-255 scale) at
    radial spatial frequencies between 1/4 Nyquist and Nyquist (0.125 to 0.5 cycles per pixel),
    from the 2-D FFT of the whole image (no window), summed."""
    rgb = np.asarray(img.convert("RGB"), dtype=np.float64)
    y = rgb @ np.array([0.299, 0.587, 0.114])
    p = np.abs(np.fft.rfft2(y - y.mean())) ** 2
    fy = np.fft.fftfreq(y.shape[0])[:, None]
    fx = np.fft.rfftfreq(y.shape[1])[None, :]
    r = np.sqrt(fy ** 2 + fx ** 2)
    band = (r >= 0.125) & (r <= 0.5)
    return float(p[band].sum())


def hf_ratio(original, decoded) -> float:
    """Decoded fine-detail energy over the original's: 1.0 = as much detail, blur -> 0."""
    e = hf_energy(original)
    return hf_energy(decoded) / e if e > 0 else float("nan")


def compare(original, decoded) -> dict:
    """PSNR (dB), MS-SSIM and the high-frequency energy ratio between two PIL images of equal size."""
    a, b = image_to_tensor(original), image_to_tensor(decoded)
    if a.shape != b.shape:
        raise ValueError(f"size mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    with torch.no_grad():
        return {"psnr": psnr(a, b), "ms_ssim": float(ms_ssim(a.double(), b.double())[0]),
                "hf_ratio": hf_ratio(original, decoded)}


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in 0-255 (..., 3) -> CIELAB (D65)."""
    c = rgb.astype(np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375],
                  [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference (Sharma, Wu and Dalal 2005) between Lab arrays (..., 3)."""
    L1, a1, b1 = np.moveaxis(lab1, -1, 0)
    L2, a2, b2 = np.moveaxis(lab2, -1, 0)
    cbar = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(cbar ** 7 / (cbar ** 7 + 25.0 ** 7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    zero = c1p * c2p == 0
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(zero, 0.0, dh)
    dL, dC = L2 - L1, c2p - c1p
    dH = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh) / 2)
    lbar, cbarp = (L1 + L2) / 2, (c1p + c2p) / 2
    hsum = h1p + h2p
    hbar = np.where(np.abs(h1p - h2p) <= 180, hsum / 2, np.where(hsum < 360, (hsum + 360) / 2, (hsum - 360) / 2))
    hbar = np.where(zero, hsum, hbar)
    t = (1 - 0.17 * np.cos(np.radians(hbar - 30)) + 0.24 * np.cos(np.radians(2 * hbar))
         + 0.32 * np.cos(np.radians(3 * hbar + 6)) - 0.20 * np.cos(np.radians(4 * hbar - 63)))
    dtheta = 30 * np.exp(-(((hbar - 275) / 25) ** 2))
    rc = 2 * np.sqrt(cbarp ** 7 / (cbarp ** 7 + 25.0 ** 7))
    sl = 1 + 0.015 * (lbar - 50) ** 2 / np.sqrt(20 + (lbar - 50) ** 2)
    sc = 1 + 0.045 * cbarp
    sh = 1 + 0.015 * cbarp * t
    rt = -np.sin(np.radians(2 * dtheta)) * rc
    return np.sqrt((dL / sl) ** 2 + (dC / sc) ** 2 + (dH / sh) ** 2 + rt * (dC / sc) * (dH / sh))


def colour_error(original, decoded, factor: int = 16) -> float:
    """Mean CIEDE2000 between the two images, both box-downscaled by `factor` (the colour of
    regions, not of detail). Takes PIL images or uint8 (H, W, 3) arrays."""
    return colour_error_lab(region_lab(original, factor), decoded, factor)


def region_lab(img, factor: int = 16) -> np.ndarray:
    """CIELAB of the image box-downscaled by `factor` (PIL image or uint8 (H, W, 3) array)."""
    img = Image.fromarray(img) if isinstance(img, np.ndarray) else img
    w, h = img.size
    return srgb_to_lab(np.asarray(img.convert("RGB").resize((max(1, w // factor), max(1, h // factor)), 4)))


def colour_error_lab(original_lab: np.ndarray, decoded, factor: int = 16) -> float:
    """`colour_error` against an original already through `region_lab` (one original, many
    decodes)."""
    return float(ciede2000(original_lab, region_lab(decoded, factor)).mean())


def grey_error(decoded) -> int:
    """Largest difference between two colour channels of one pixel (0 for a grey image)."""
    a = np.asarray(decoded.convert("RGB")).astype(np.int16)
    return int(max(np.abs(a[..., 0] - a[..., 1]).max(), np.abs(a[..., 1] - a[..., 2]).max()))


def _via_png(a, b, score) -> float | None:
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        pa, pb = Path(d) / "a.png", Path(d) / "b.png"
        a.save(pa)
        b.save(pb)
        return score(str(pa), str(pb))


def ssimulacra2_score(a, b) -> float | None:
    """SSIMULACRA2 (PyPI `ssimulacra2`, optional; 100 = identical, lower = worse); None if absent."""
    try:
        from ssimulacra2 import compute_ssimulacra2
    except ImportError:
        return None
    return _via_png(a, b, lambda pa, pb: float(compute_ssimulacra2(pa, pb)))


def butteraugli_score(a, b) -> float | None:
    """Butteraugli distance from the Debian `butteraugli` program (lower = better); None if absent."""
    import shutil
    import subprocess
    exe = shutil.which("butteraugli")
    if not exe:
        return None

    def run(pa, pb):
        out = subprocess.run([exe, pa, pb], capture_output=True, text=True, check=False)
        try:
            return float(out.stdout.split()[0])
        except (IndexError, ValueError):
            return None
    return _via_png(a, b, run)
