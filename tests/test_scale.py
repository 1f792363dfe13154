"""Coding a smaller copy of the photo: extension 3 (display size), its upsampling (spec section 12)
and rate control over the coded scale (scalecontrol.py)."""

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import refdecoder as ref
from tiny import photo
from tokcodec import container, resample
from tokcodec.cli import main
from tokcodec.errors import FormatError


# ------------------------------------------------------------------ upsampling (section 12.2)
@pytest.mark.parametrize("src,dst", [((17, 9), (40, 31)), ((48, 32), (96, 64)), ((30, 20), (30, 57))])
def test_upsampling_matches_the_spec_in_float64(src, dst):
    rgb = np.random.default_rng(1).integers(0, 256, (src[1], src[0], 3), dtype=np.uint8)
    got = resample.upsample(rgb, dst).astype(int)
    want = ref.upsample(rgb, *dst).astype(int)
    assert got.shape == (dst[1], dst[0], 3)
    assert np.abs(got - want).max() <= 1 and (got != want).mean() <= 0.01


def test_upsampling_in_row_bands_gives_the_same_pixels(monkeypatch):
    """Large outputs are resampled in bands of rows (bounded memory); every band boundary must
    leave the pixels unchanged."""
    rgb = np.random.default_rng(4).integers(0, 256, (23, 37, 3), dtype=np.uint8)
    whole = resample.upsample(rgb, (101, 67))
    monkeypatch.setattr(resample, "UPSAMPLE_BAND_VALUES", 3 * 101 * 5 + 7)  # bands of 5 rows
    assert np.array_equal(resample.upsample(rgb, (101, 67)), whole)


def test_upsampling_keeps_flat_and_grey_images_and_changes_nothing_at_the_same_size():
    flat = np.full((12, 20, 3), (200, 30, 90), dtype=np.uint8)
    assert (resample.upsample(flat, (57, 33)) == (200, 30, 90)).all()
    grey = np.repeat(np.random.default_rng(2).integers(0, 256, (12, 20, 1), dtype=np.uint8), 3, axis=2)
    up = resample.upsample(grey, (50, 31))
    assert (up[..., 0] == up[..., 1]).all() and (up[..., 1] == up[..., 2]).all()
    assert resample.upsample(grey, (20, 12)) is grey


# ------------------------------------------------------------------ container (section 12.1)
@pytest.fixture(scope="module")
def small_file(codec):
    return codec.encode(photo(64, 48, seed=3), None, None, 64, "entire").data


def test_display_size_round_trips_and_sets_the_shown_size(small_file):
    data = resample.with_display(small_file, (150, 97))
    hd = container.unpack(data).header
    assert (hd.width, hd.height) == (64, 48)
    assert container.display_size(hd) == (150, 97) == container.shown_size(hd)
    assert len(data) == len(small_file) + resample.extension_bytes((150, 97)) == len(small_file) + 5  # 150: 2 bytes
    assert resample.with_display(data, None) == small_file  # removing it gives the file back


@pytest.mark.parametrize("size,why", [((63, 48), "not 1 to 16 times"), ((64, 47), "not 1 to 16 times"),
                                      ((1025, 48), "not 1 to 16 times"), ((64, 769), "not 1 to 16 times")])
def test_display_sizes_out_of_range_are_refused(small_file, size, why):
    c = container.unpack(small_file)
    body = container.display_body(size)
    bad = container.pack(container.Container(
        container.Header(**{**c.header.__dict__, "extensions": [(3, body)]}), c.payload))
    with pytest.raises(FormatError, match=why):
        container.unpack(bad)


def test_display_over_the_pixel_limit_is_refused_before_any_work(small_file):
    data = resample.with_display(small_file, (1024, 768))
    container.unpack(data)
    with pytest.raises(FormatError, match="shown at 1024x768 .* over the limit of 500000"):
        container.unpack(data, max_pixels=500_000)


# ------------------------------------------------------------------ encode and decode
def test_file_coded_at_half_scale_decodes_at_full_size(codec):
    img = photo(200, 130, seed=4)
    r = codec.encode(img, nbytes=200, scale=0.5)
    assert len(r.data) <= 200 and r.coded_size == (100, 65)
    c = codec.read(r.data)
    assert (c.header.width, c.header.height) == (100, 65) and container.display_size(c.header) == (200, 130)
    out = codec.decode(r.data)
    assert out.size == (200, 130)
    # what the decoder shows is its coded image, corrected, upsampled
    small = codec.decode(resample.with_display(r.data, None))
    assert np.array_equal(np.asarray(out), resample.upsample(np.asarray(small), (200, 130)))


def test_rate_control_reaches_targets_under_the_smallest_full_size_file(codec):
    """The smallest full-size file is larger than the budget; a smaller copy fits and shows at
    full size."""
    from tokcodec.ratecontrol import TargetError
    img = photo(320, 224, seed=6)
    with pytest.raises(TargetError) as e:
        codec.encode(img, nbytes=40, scale=1.0)
    budget = len(e.value.smallest.data) - 1
    r = codec.encode(img, nbytes=budget)
    assert len(r.data) <= budget and r.coded_size is not None
    assert codec.decode(r.data).size == (320, 224)


def test_scale_search_codes_the_scale_whose_file_measured_best(codec, monkeypatch):
    """Auto scale tries several coded sizes and codes the one whose full-size decode measured best
    (nearest codewords: no second round with rd codewords)."""
    img = photo(256, 192, seed=7)
    p = codec.prepare(img, tokens="nearest")
    budget = 60  # 0.0098 bpp: searched
    r = codec.encode_prepared(p, budget)
    assert len(r.data) <= budget and len(p["trials"]) >= 2
    assert (r.coded_size or (256, 192)) == max(p["trials"], key=p["trials"].get)
    assert codec.decode(r.data).size == (256, 192)


@pytest.mark.parametrize("mode", ["entire", "edge_more", None])
def test_scale_search_measures_exactly_what_the_decoder_shows(codec, mode, monkeypatch):
    """The search scores a file by `shown_decode` (the encoder's tokens, no range decode): it
    must equal the real decode at realism 0, for reduced files of every kind (with their
    correction grid and display size), when the encoder draws its pixels in float32; in
    bfloat16 (precision.py, where native) it is within two levels of it."""
    from tokcodec import precision
    img = photo(256, 192, seed=7)
    size = resample.coded_size((256, 192), 0.5)
    for native in (False, True):
        monkeypatch.setattr(precision, "native_bf16", lambda device_type, native=native: native)
        p = codec.prepare(img)
        a = codec.analysis_at(p, size)
        r = codec.encode_shown(a, 70, (256, 192), mode=mode, polish=False)
        assert r.coded_size == size
        got = codec.shown_decode(a, r).astype(int)
        want = np.asarray(codec.decode(r.data, realism=0.0)).astype(int)
        if native:
            assert np.abs(got - want).max() <= 2 and (got != want).mean() < 0.2
        else:
            assert np.array_equal(got, want)


def test_targets_from_the_search_limit_up_code_the_photo_at_its_size(codec):
    from tokcodec.scalecontrol import SEARCH_MAX_BPP
    img = photo(256, 192, seed=7)
    p = codec.prepare(img)
    r = codec.encode_prepared(p, int(SEARCH_MAX_BPP * 256 * 192 / 8) + 1)
    assert r.coded_size is None and "trials" not in p


def test_trim_keeps_the_display_size(codec):
    r = codec.encode(photo(200, 130, seed=4), None, None, 64, "entire", scale=0.5)
    budget = int(len(r.data) * 0.7)
    t = codec.trim(r.data, budget)
    assert len(t.data) <= budget
    assert container.display_size(container.unpack(t.data).header) == (200, 130)
    assert codec.decode(t.data).size == (200, 130)


# ------------------------------------------------------------------ command line
def test_cli_scale_option_and_info(tmp_path, tiny_weights):
    src = tmp_path / "a.png"
    photo(200, 130, seed=4).save(src)
    run = CliRunner().invoke
    res = run(main, ["encode", str(src), str(tmp_path / "a.tkc"), "--bytes", "300", "--scale", "0.5",
                     "--weights", str(tiny_weights)])
    assert res.exit_code == 0, res.output
    res = run(main, ["info", str(tmp_path / "a.tkc"), "--json"])
    import json
    d = json.loads(res.output)
    assert (d["width"], d["height"], d["coded_size"]) == (200, 130, [100, 65])
    res = run(main, ["decode", str(tmp_path / "a.tkc"), str(tmp_path / "b.png"), "--weights", str(tiny_weights)])
    assert res.exit_code == 0 and Image.open(tmp_path / "b.png").size == (200, 130)
    for bad in ("2", "0", "half"):
        res = run(main, ["encode", str(src), str(tmp_path / "c.tkc"), "--scale", bad])
        assert res.exit_code == 2 and "--scale" in res.output and not (tmp_path / "c.tkc").exists()


def test_file_fits_even_where_the_extension_costs_more_than_predicted(codec, monkeypatch):
    """The extension's bytes are predicted before the tokens are coded; where the file then
    overflows (header_len's varint can grow by a byte) the tokens get a smaller budget."""
    img = photo(200, 130, seed=4)
    monkeypatch.setattr(resample, "extension_bytes", lambda size: 0)  # predicts too little
    for budget in (150, 220):
        r = codec.encode(img, nbytes=budget, scale=0.5)
        assert len(r.data) <= budget and r.coded_size == (100, 65)


def test_realism_detail_of_a_reduced_file_is_drawn_at_the_shown_size(tmp_path, tiny_weights, monkeypatch):
    """At r > 0 a reduced file shows its upsampled fidelity picture plus the realism decoder's
    detail band drawn on the token grid of the shown size; at r = 0 it is the upsampled picture.
    (Pixels in float32 throughout, so the parts compose exactly: at r > 0 a decode draws them in
    bfloat16 where native, precision.py.)"""
    import shutil
    from tiny import make_decoder
    from tokcodec import precision
    from tokcodec.codec import Codec
    monkeypatch.setattr(precision, "native_bf16", lambda device_type: False)
    shutil.copy(tiny_weights / "tokc.safetensors", tmp_path / "tokc.safetensors")
    make_decoder(tmp_path)
    c = Codec(str(tmp_path), "cpu")
    r = c.encode(photo(200, 130, seed=4), nbytes=300, scale=0.5)
    base = np.asarray(c.decode(r.data, seed=3, realism=0.0)).astype(int)
    small = c.decode(resample.with_display(r.data, None), seed=3, realism=0.0)
    assert np.array_equal(base, resample.upsample(np.asarray(small), (200, 130)))
    rich = np.asarray(c.decode(r.data, seed=3, realism=0.8)).astype(int)
    assert rich.shape == base.shape and (rich != base).mean() > 0.2
    hd = c.read(r.data).header
    tokens, keep = c.decode_tokens(c.read(r.data))
    full = tokens if keep.all() else c.generate(tokens, keep, hd.codebook, 3, 0.0, hd.coder_id)
    up = resample.tokens_at(full, (100, 65), (200, 130))
    assert up.shape == (10, 14) and np.array_equal(up[::2, ::2][:, :7], full[:5, :7])
    band = (np.asarray(c.render(up, hd.codebook, (200, 130), 0.8, 3, hd.decoder)).astype(int)
            - np.asarray(c.render(up, hd.codebook, (200, 130), 0.0, 3, hd.decoder)).astype(int))
    assert np.array_equal(rich, np.clip(base + band, 0, 255))
    assert np.array_equal(rich, np.asarray(c.decode(r.data, seed=3, realism=0.8)))  # seeded


def test_default_realism_of_a_reduced_file_is_scaled_with_it(codec, monkeypatch):
    """A file coded at half size decodes by default at half the default realism; an explicit
    realism is used as given."""
    r = codec.encode(photo(200, 130, seed=4), nbytes=300, scale=0.5)
    asked = []
    monkeypatch.setattr(type(codec), "default_realism", property(lambda self: 0.6))
    real = codec.render
    monkeypatch.setattr(codec, "render", lambda *a, **k: asked.append(a[3]) or real(*a, **k))
    codec.decode(r.data)
    codec.decode(r.data, realism=0.6)
    codec.decode(resample.with_display(r.data, None))
    assert asked == [pytest.approx(0.3), 0.6, 0.6]
