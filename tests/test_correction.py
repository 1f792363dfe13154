"""Tone and colour correction (extension 2, spec/FORMAT.md section 11): it round-trips, a
decoder written from the spec reads the same values, it lowers the error where the encoder put
it, files stay within budget, grey images come back grey, and damaged bodies are refused."""

import dataclasses
import zlib

import numpy as np
import pytest
from PIL import Image

import refdecoder
from tiny import photo
from tokcodec import container, correction
from tokcodec.codec import with_correction
from tokcodec.errors import FormatError


def _random_correction(rng, cell, grey, gh, gw, spread):
    n = 1 if grey else 3
    base = rng.integers(-spread, spread + 1, (n, 1, 1))
    v = np.clip(base + rng.integers(-2, 3, (n, gh, gw)), -63, 63)
    return correction.Correction(cell, grey, (int(rng.integers(1, 30)), int(rng.integers(1, 30))), v.astype(np.int64))


@pytest.mark.parametrize("seed", range(6))
def test_body_round_trips_and_matches_the_reference_decoder(seed):
    rng = np.random.default_rng(seed)
    width, height = int(rng.integers(1, 900)), int(rng.integers(1, 700))
    cell = int(rng.integers(1, 9))
    gh, gw = correction.grid_shape(width, height, cell)
    c = _random_correction(rng, cell, bool(seed % 2), gh, gw, spread=[0, 5, 60][seed % 3])
    body = correction.pack(c)
    got = correction.unpack(body, width, height)
    assert (got.cell, got.grey, got.steps) == (c.cell, c.grey, c.steps)
    assert np.array_equal(got.values, c.values)
    cell_, grey, steps, values = refdecoder.correction(body, width, height)
    assert (cell_, bool(grey), steps) == (c.cell, c.grey, c.steps)
    assert np.array_equal(np.array(values), c.values)


def test_interpolation_follows_the_spec_formula():
    """Section 11.3, written out directly: cell centres aligned, edges clamped."""
    rng = np.random.default_rng(3)
    g = rng.normal(size=(3, 5))
    h, w = 37, 70
    want = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            ty, tx = max(0.0, (y + 0.5) * 3 / h - 0.5), max(0.0, (x + 0.5) * 5 / w - 0.5)
            i0, j0 = int(np.floor(ty)), int(np.floor(tx))
            i1, j1 = min(i0 + 1, 2), min(j0 + 1, 4)
            a, b = ty - i0, tx - j0
            want[y, x] = ((1 - a) * ((1 - b) * g[i0, j0] + b * g[i0, j1])
                          + a * ((1 - b) * g[i1, j0] + b * g[i1, j1]))
    got = correction.interpolation(h, 3) @ g @ correction.interpolation(w, 5).T
    assert np.allclose(got, want)


def test_a_uniform_offset_is_applied_exactly():
    img = np.full((40, 50, 3), 100, np.uint8)
    c = correction.Correction(2, False, (4, 2), np.zeros((3, 2, 2), np.int64))
    c.values[0] = 5  # Y + 20 levels everywhere: R, G and B all + 20
    assert (correction.apply(img, c) == 120).all()


@pytest.mark.parametrize("body, why", [
    (b"", "shorter"),
    (b"\x00\x10", "flags"),
    (b"\x00\x00\x00", "after an empty grid"),
    (b"\x02\x00\x04\x02\x10\x10\x10\x00\x00", "length"),
    (b"\x02\x00\x00\x02\x10\x10\x10", "zero step"),
    (b"\x02\x00\x04\x02\x10\x10\x10", "payload ends"),  # no words for 4 cells x 3 channels
])
def test_damaged_bodies_are_refused(body, why):
    with pytest.raises(FormatError, match="extension 2"):
        correction.unpack(body, 40, 40)
    with pytest.raises(refdecoder.Refuse):
        refdecoder.correction(body, 40, 40)


def _cast(img: Image.Image) -> Image.Image:
    """An image with a strong colour cast over its left half (what a coarse grid can fix)."""
    a = np.asarray(img).astype(np.int32)
    a[:, : a.shape[1] // 2, 0] += 60
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def test_encoder_adds_a_correction_that_lowers_the_error_and_fits_the_budget(codec):
    img = _cast(photo(320, 224, seed=11))
    rgb = np.asarray(img).astype(np.float64)
    for nbytes in (160, 400):
        r = codec.encode(img, nbytes=nbytes)
        assert len(r.data) <= nbytes
        c = container.unpack(r.data)
        bodies = [b for t, b in c.header.extensions if t == correction.TAG]
        assert len(bodies) == 1 and c.header.minor == container.WRITE_MINOR
        corr = correction.unpack(bodies[0], *img.size)
        assert corr.cell > 0
        decoded = np.asarray(codec.decode(r.data, realism=0.0)).astype(np.float64)
        stripped = container.pack(container.Container(
            dataclasses.replace(c.header, extensions=[], minor=0), c.payload))
        plain = np.asarray(codec.decode(stripped, realism=0.0)).astype(np.float64)  # a 1.0 reader's view
        assert ((decoded - rgb) ** 2).mean() < 0.9 * ((plain - rgb) ** 2).mean()


def test_without_correction_the_file_has_no_extension(codec):
    r = codec.encode(photo(160, 96, seed=2), nbytes=200, correct=False)
    hd = container.unpack(r.data).header
    assert hd.minor == container.WRITE_MINOR and hd.extensions == []


@pytest.mark.parametrize("size", [(160, 96), (17, 9)])
def test_grey_in_grey_out(codec, size):
    grey = photo(*size, seed=4).convert("L").convert("RGB")
    try:
        data = codec.encode(grey, bpp=0.05).data
    except Exception as e:  # tiny images: rate control offers the smallest file instead
        data = e.smallest.data
    out = np.asarray(codec.decode(data, realism=0.0, temperature=0.7, seed=3))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert correction.unpack([b for t, b in container.unpack(data).header.extensions
                              if t == correction.TAG][0], *size).grey


def test_a_damaged_correction_is_refused_with_a_clear_message(codec, tmp_path):
    from click.testing import CliRunner
    from tokcodec.cli import main
    r = codec.encode(_cast(photo(160, 96, seed=6)), nbytes=300)
    c = container.unpack(r.data)
    bad = [(t, b[:1] + b"\xf0" + b[2:]) if t == correction.TAG else (t, b) for t, b in c.header.extensions]
    data = container.pack(container.Container(dataclasses.replace(c.header, extensions=bad), c.payload))
    with pytest.raises(FormatError, match="extension 2"):
        codec.decode(data)
    p = tmp_path / "bad.tkc"
    p.write_bytes(data)
    res = CliRunner().invoke(main, ["decode", str(p), str(tmp_path / "out.png"), "--weights",
                                    str(codec.model.path)])
    assert res.exit_code == 1 and "extension 2" in res.output
    assert not (tmp_path / "out.png").exists()


def test_two_corrections_are_refused(codec):
    r = codec.encode(_cast(photo(160, 96, seed=6)), nbytes=300)
    c = container.unpack(r.data)
    twice = c.header.extensions * 2
    data = container.pack(container.Container(dataclasses.replace(c.header, extensions=twice), c.payload))
    with pytest.raises(FormatError, match="at most one"):
        codec.decode(data)


def test_with_correction_replaces_the_extension_and_keeps_the_crc_valid(codec):
    r = codec.encode(photo(160, 96, seed=8), nbytes=300, correct=False)
    once = with_correction(r.data, correction.Correction(0, True))
    twice = with_correction(once, correction.Correction(0, False))
    hd = container.unpack(twice).header
    assert [t for t, _ in hd.extensions] == [correction.TAG]
    assert zlib.crc32(twice[:-4]) == int.from_bytes(twice[-4:], "little")


def test_in_a_1_0_file_tag_2_is_skipped_whatever_it_holds(codec):
    """Extension 2 is defined from format 1.1 on: a minor-0 file's tag 2 is unknown and ancillary."""
    r = codec.encode(_cast(photo(160, 96, seed=6)), nbytes=300)
    c = container.unpack(r.data)
    as_1_0 = container.pack(container.Container(dataclasses.replace(c.header, minor=0), c.payload))
    junk = container.pack(container.Container(dataclasses.replace(
        c.header, minor=0, extensions=[(correction.TAG, b"hello")]), c.payload))
    plain = container.pack(container.Container(dataclasses.replace(c.header, minor=0, extensions=[]), c.payload))
    want = np.asarray(codec.decode(plain, realism=0.0))
    assert np.array_equal(np.asarray(codec.decode(as_1_0, realism=0.0)), want)
    assert np.array_equal(np.asarray(codec.decode(junk, realism=0.0)), want)
    assert not np.array_equal(np.asarray(codec.decode(r.data, realism=0.0)), want)


def test_cli_no_correction_writes_no_extension_and_info_reports_the_correction(codec, tmp_path):
    from click.testing import CliRunner
    from tokcodec.cli import main
    src = tmp_path / "cast.png"
    _cast(photo(160, 96, seed=6)).save(src)
    w = ["--weights", str(codec.model.path)]
    for flag, has in (([], True), (["--no-correction"], False)):
        out = tmp_path / f"o{has}.tkc"
        res = CliRunner().invoke(main, ["encode", str(src), str(out), "--bytes", "300", *flag, *w])
        assert res.exit_code == 0, res.output
        exts = container.unpack(out.read_bytes()).header.extensions
        assert [t for t, _ in exts] == ([correction.TAG] if has else [])
        info = CliRunner().invoke(main, ["info", str(out), "--json"])
        assert ("colour" in info.output) == has, info.output


@pytest.mark.parametrize("corr", [correction.Correction(0, True), correction.Correction(0, False),
                                  correction.Correction(3, False, (12, 6), np.arange(-30, 30).reshape(3, 4, 5)),
                                  correction.Correction(1, True, (9, 9), np.ones((1, 40, 50), dtype=np.int64))])
def test_extension_bytes_is_what_the_correction_adds_to_a_file(codec, corr):
    # rate control prices every grid with extension_bytes, before the token file exists
    r = codec.encode(photo(160, 96, seed=8), nbytes=300, correct=False)
    assert correction.extension_bytes(corr) == len(with_correction(r.data, corr)) - len(r.data)


def test_fit_from_known_block_sums_equals_fit(codec):
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) - [50, 0, 20] + rng.integers(-9, 10, a.shape), 0, 255).astype(np.uint8)
    sums = correction.block_sums(a, b)
    for cell, steps, grey in ((1, (12, 6), False), (3, (24, 4), True)):
        x, y = correction.fit(a, b, cell, steps, grey), correction.fit(a, b, cell, steps, grey, sums)
        assert np.array_equal(x.values, y.values) and x.values.any()


def test_cell_means_are_the_means_of_the_ycbcr_difference():
    """Cell means from 16-px block sums equal the direct means of the per-pixel YCbCr
    difference over each cell, edge cells (fewer pixels) included."""
    rng = np.random.default_rng(4)
    for h, w in ((70, 90), (64, 96), (33, 17)):
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        b = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        diff = _ycc_difference(a, b)
        sums = correction.block_sums(a, b)
        assert sums.shape == (-(-h // 16), -(-w // 16), 3) and sums.sum() == (a.astype(int) - b).sum()
        for cell in (1, 2, 3):
            f = 16 * cell
            want = np.array([[diff[i:i + f, j:j + f].reshape(-1, 3).mean(0) for j in range(0, w, f)]
                             for i in range(0, h, f)]).transpose(2, 0, 1)
            assert np.allclose(correction.cell_means(sums, cell, (w, h)), want, rtol=0, atol=1e-9)


def test_the_kept_file_is_the_best_measured_of_the_correction_trials(codec, monkeypatch):
    """Rate control makes up to CORRECTION_TRIALS files (the best grids by prediction) and
    keeps the one whose own decode scores best; with one trial it keeps the predicted best."""
    from tokcodec import ratecontrol
    from tokcodec.metrics import colour_error
    img = _cast(photo(320, 224, seed=11))
    rgb = np.asarray(img).astype(np.float64)

    def score(data):
        out = np.asarray(codec.decode(data, realism=0.0))
        return 10 * np.log10(255 ** 2 / ((out - rgb) ** 2).mean()) - ratecontrol.COLOUR_WEIGHT * colour_error(img, out)
    got = {}
    for trials in (1, 3):
        monkeypatch.setattr(ratecontrol, "CORRECTION_TRIALS", trials)
        got[trials] = codec.encode(img, nbytes=400).data
        assert len(got[trials]) <= 400
    assert score(got[3]) >= score(got[1]) - 1e-9


def test_the_correction_is_applied_in_row_bands_to_the_same_pixels(monkeypatch):
    rng = np.random.default_rng(9)
    decoded = rng.integers(0, 256, (203, 150, 3), dtype=np.uint8)
    for grey in (False, True):
        corr = _random_correction(rng, 2, grey, *correction.grid_shape(150, 203, 2), spread=40)
        whole = correction.apply(decoded, corr)
        monkeypatch.setattr(correction, "BAND_ROWS", 64)
        banded = correction.apply(decoded, corr)
        monkeypatch.undo()
        assert np.abs(banded.astype(int) - whole).max() <= 1 and (banded != whole).mean() < 1e-3
        assert (whole != decoded).mean() > 0.5


def _ycc_difference(original, decoded):
    return (original.astype(np.float64) - decoded.astype(np.float64)) @ correction.RGB_TO_YCC.T


def test_a_chroma_only_grid_fixes_a_colour_cast_for_a_fraction_of_the_bytes():
    """Y step 255 (rate control's chroma-only grids): where the decode's brightness is nearly
    right and its colour is off, every Y value rounds to 0, the cast is removed as well as with
    a fine Y step, and the grid costs fewer bytes."""
    rng = np.random.default_rng(5)
    original = rng.integers(40, 216, (160, 224, 3), dtype=np.uint8)
    ycc = _ycc_difference(original, np.zeros_like(original))  # original in YCbCr
    ripple = 6 * np.sin(np.arange(224) / 20.0)[None, :, None] * [1.0, 0.0, 0.0]  # small luma errors
    cast = ycc + [0.0, 9.0, -7.0] + ripple + rng.normal(0, 3, ycc.shape)  # and a chroma shift
    decoded = np.clip(np.round(cast @ correction.YCC_TO_RGB.T), 0, 255).astype(np.uint8)
    chroma = correction.fit(original, decoded, 2, (255, 3))
    full = correction.fit(original, decoded, 2, (4, 3))
    assert not chroma.values[0].any() and chroma.values[1:].any()
    def err(c):
        return np.abs(_ycc_difference(original, correction.apply(decoded, c))[..., 1:].mean((0, 1))).max()
    # the mean cast of 9 levels is left within about half a quantiser step (3 levels)
    assert err(chroma) < 1.7 and np.abs(_ycc_difference(original, decoded)[..., 1:].mean((0, 1))).max() > 6
    assert err(chroma) <= err(full) + 0.5
    assert correction.extension_bytes(chroma) < correction.extension_bytes(full)


def test_the_grid_cost_per_byte_of_tokens_falls_with_the_rate():
    """Rate control's predicted cost of a grid's bytes (dB per e-fold of token bytes) is the
    measured slope of each rate range, interpolated in log bpp and held beyond the ends."""
    from tokcodec.ratecontrol import CORRECTION_SLOPES, correction_slope
    size = (768, 512)
    def at(bpp):
        return correction_slope(round(bpp * size[0] * size[1] / 8), size)
    (x0, y0), (x1, y1), (x2, y2) = CORRECTION_SLOPES
    assert at(0.002) == pytest.approx(y0) and at(0.1) == pytest.approx(y2)
    assert at(x1) == pytest.approx(y1, abs=0.01)
    assert y0 > at(0.01) > y1 > at(0.02) > y2


def test_large_photos_rank_grids_by_a_prediction_from_reduced_copies(monkeypatch):
    """Over SCORE_MAX_PIXELS, rate control predicts each grid's measure from copies reduced
    4x (ratecontrol.grid_quality): within 0.02 dB of the measure on the whole decode here, with
    the same best grid; at or under it, the measure itself."""
    from tokcodec import ratecontrol as R
    from tokcodec.metrics import region_lab
    rng = np.random.default_rng(3)
    rgb = np.asarray(photo(640, 480, seed=9))
    yy, xx = np.mgrid[0:480, 0:640] / 480.0
    cast = np.stack([12 * np.sin(3 * xx), -9 * yy, 6 * np.cos(2 * xx + yy)], -1)  # a smooth colour drift
    d0 = np.clip(rgb + cast + rng.normal(0, 6, rgb.shape), 0, 255).round().astype(np.uint8)
    lab = region_lab(rgb)
    exact = R.grid_quality(rgb, lab, d0)  # 0.3 MP: the measure itself
    grids = [correction.Correction(0, False)] + [
        correction.fit(rgb, d0, cell, steps) for cell in (2, 4, 8) for steps in ((4, 2), (12, 6), (255, 5))]
    want = [exact(c) for c in grids]
    assert want == [R.measured_quality(rgb, lab, correction.apply(d0, c)) for c in grids]
    monkeypatch.setattr(R, "SCORE_MAX_PIXELS", 0)
    got = [R.grid_quality(rgb, lab, d0)(c) for c in grids]
    assert np.abs(np.array(got) - want).max() < 0.02
    assert int(np.argmax(got)) == int(np.argmax(want)) and max(want) - want[0] > 0.5  # the grids matter here


def test_squared_error_in_row_bands_is_the_whole_sum():
    """`ratecontrol.squared_error` sums in bands of rows (bounded memory): the exact integer
    sum of the whole difference, for band sizes that do and do not divide the height."""
    from tokcodec import ratecontrol as R
    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (37, 23, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (37, 23, 3), dtype=np.uint8)
    want = int(((a.astype(np.int64) - b) ** 2).sum())
    for rows in (1, 5, 37, 256):
        assert R.squared_error(a, b, rows) == want
    assert R.squared_error(a, a) == 0


def test_block_sums_over_several_bands_are_the_direct_sums():
    """`correction.block_sums` works in bands of 256 rows: the per-block sums of a photo taller
    than several bands (height not a multiple of 16) equal the sums taken block by block."""
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (601, 37, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (601, 37, 3), dtype=np.uint8)
    d = a.astype(np.int64) - b
    want = np.array([[d[i:i + 16, j:j + 16].reshape(-1, 3).sum(0) for j in range(0, 37, 16)]
                     for i in range(0, 601, 16)])
    got = correction.block_sums(a, b)
    assert got.dtype == np.int64 and np.array_equal(got, want)
