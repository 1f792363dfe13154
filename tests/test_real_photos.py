"""End-to-end checks with the shipped weights on real photographs (Kodak).

Skipped when ../shared/data/kodak is absent (a user's clone) or no weights are shipped."""

import pytest

from conftest import SHARED

KODAK = SHARED / "kodak"


@pytest.fixture(scope="module")
def shipped():
    from tokcodec.codec import Codec
    from tokcodec.weights import WeightsError
    if not (KODAK / "kodim23.png").exists():
        pytest.skip(f"real photos not available ({KODAK} is absent)")
    try:
        return Codec(None, "cpu")
    except WeightsError as e:
        pytest.skip(f"no shipped weights: {e}")


def test_kodim23_at_0_03_bpp(shipped):
    from tokcodec.imageio import load_image
    from tokcodec.metrics import compare
    img = load_image(KODAK / "kodim23.png")
    data = shipped.encode(img, 0.03).data
    assert len(data) <= 1474
    a = shipped.decode(data, seed=7)
    b = shipped.decode(data, seed=7)
    assert a.tobytes() == b.tobytes()
    assert compare(img, a)["psnr"] >= 19.0


@pytest.mark.parametrize("mode", ["edge", "edge_more"])
def test_rd_blocks_leave_less_pixel_error_than_edge_blocks(shipped, mode):
    """Issue 14: at the same number of kept tokens, blocks chosen by the pixel error they save
    decode closer to the original than blocks chosen by edge strength (UIGC's rule)."""
    import numpy as np
    from PIL import Image
    from tokcodec.codec import Setting
    img = Image.open(KODAK / "kodim23.png").convert("RGB").crop((128, 64, 448, 320))
    rd, edge = shipped.analyse(img, "rd"), shipped.analyse(img, "edge")
    for q in (0.25, 0.5):
        s = Setting(16, mode, q)
        errors = []
        for a in (rd, edge):
            r = shipped.encode_setting(a, s)
            errors.append(float(((shipped.reconstruct(r, a).astype(np.float64) - a["rgb"]) ** 2).mean()))
        assert errors[0] < 0.95 * errors[1], (q, errors)
