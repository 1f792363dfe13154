"""Measures used by the benchmark: CIEDE2000 against published values, detail and grey checks."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from tiny import photo
from tokcodec.metrics import ciede2000, colour_error, grey_error, hf_ratio


@pytest.mark.parametrize("lab1,lab2,want", [  # Sharma, Wu and Dalal (2005), table 1
    ((50, 2.6772, -79.7751), (50, 0, -82.7485), 2.0425),
    ((50, -1.3802, -84.2814), (50, 0, -82.7485), 1.0000),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
])
def test_ciede2000_matches_published_pairs(lab1, lab2, want):
    assert ciede2000(np.array(lab1, float), np.array(lab2, float)) == pytest.approx(want, abs=1e-4)


def test_hf_ratio_one_for_identity_and_small_for_blur():
    img = photo(128, 96, seed=2)
    assert hf_ratio(img, img) == pytest.approx(1.0)
    mild, strong = (hf_ratio(img, img.filter(ImageFilter.GaussianBlur(s))) for s in (1, 3))
    assert strong < mild < 0.8 and strong < 0.2


def test_colour_error_sees_a_tint_and_grey_error_sees_colour():
    img = photo(128, 96, seed=2)
    tinted = Image.fromarray(np.clip(np.asarray(img).astype(int) + [20, 0, -20], 0, 255).astype(np.uint8))
    assert colour_error(img, img) == 0.0
    assert colour_error(img, tinted) > 5
    grey = img.convert("L").convert("RGB")
    assert grey_error(grey) == 0 and grey_error(img) > 0
