"""The realism knob (detail.py): fidelity below a cut-off frequency, realism detail above it."""

import math

import pytest
import torch

from tokcodec import detail


def test_knob_ends_and_pivot():
    assert detail.knob(0.0) == (0.0, detail.SIGMA_MIN)
    assert detail.knob(detail.PIVOT) == (1.0, detail.SIGMA_MIN)
    assert detail.knob(1.0) == (1.0, detail.SIGMA_MAX)


def test_knob_is_monotone():
    pts = [detail.knob(i / 100) for i in range(101)]
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(pts, pts[1:]))


@pytest.mark.parametrize("bad", [-0.01, 1.01, math.nan])
def test_knob_refuses_out_of_range(bad):
    with pytest.raises(ValueError, match="realism"):
        detail.knob(bad)


def test_blur_keeps_constants_and_sums_to_one():
    taps = detail.gaussian_taps(2.0)
    assert abs(sum(taps) - 1) < 1e-12 and len(taps) == 2 * 6 + 1
    x = torch.full((1, 3, 20, 24), 0.25)
    assert torch.allclose(detail.blur(x, 2.0), x, atol=1e-6)


def test_band_split_removes_a_smooth_shift_and_keeps_fine_texture():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 3, 64, 64, generator=g) * 0.5 + 0.25
    ramp = torch.linspace(-0.1, 0.1, 64).view(1, 1, 1, 64).expand(1, 3, 64, 64)
    # a tone shift that varies slowly across the image: nothing of it may pass
    out = detail.band_split(x0, x0 + 0.05 + ramp, 1.0)
    assert (out - x0).abs().max() < 2e-3
    # pixel-scale texture (a checkerboard of +-0.1) passes almost whole
    i = torch.arange(64)
    checker = 0.1 * (((i.view(-1, 1) + i.view(1, -1)) % 2) * 2 - 1).float()
    out = detail.band_split(x0, x0 + checker, 1.0)
    kept = ((out - x0)[..., 8:-8, 8:-8] * checker[8:-8, 8:-8]).mean() / (checker ** 2).mean()
    assert 0.9 < float(kept) <= 1.0


def test_band_split_at_equal_decoders_is_the_fidelity_picture():
    x0 = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    assert torch.equal(detail.band_split(x0, x0, 2.5), x0)


def test_band_split_does_not_depend_on_thread_count():
    g = torch.Generator().manual_seed(2)
    x0, xr = torch.rand(1, 3, 96, 80, generator=g), torch.rand(1, 3, 96, 80, generator=g)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = detail.band_split(x0, xr, 3.0)
        torch.set_num_threads(2)
        b = detail.band_split(x0, xr, 3.0)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(a, b)
