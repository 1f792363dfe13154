"""Weight-free image quality metrics: PSNR, SSIM and MS-SSIM (Wang et al. 2003), in torch.

Images are float tensors in [0, 1], shape (B, 3, H, W) or (3, H, W). These are used both for
evaluation (on 0-255 RGB, the convention of the compression literature) and as training losses.
"""

from __future__ import annotations

import math

import numpy as np
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
