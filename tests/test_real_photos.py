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
