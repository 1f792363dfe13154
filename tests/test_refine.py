"""Token choice for the decoder's pixels (refine.py, `tokens="rd"`): it lowers the decoder's
error, touches only what it may, and the files it makes are ordinary files."""

import numpy as np
import pytest
import torch
from torch import nn

from tiny import photo
from tokcodec import codec as codec_module
from tokcodec.codec import Setting
from tokcodec.refine import pixel_error, refine


def linear_setup(seed=0, h=6, w=8, k=16, d=4):
    """A decoder where each token paints its own 16x16 block (1x1 convolution, pixel shuffle),
    a codebook, the true tokens, and their decode as the target."""
    g = torch.Generator().manual_seed(seed)
    dec = nn.Sequential(nn.Conv2d(d, 3 * 256, 1), nn.PixelShuffle(16))
    with torch.no_grad():
        dec[0].weight.copy_(torch.randn(3 * 256, d, 1, 1, generator=g) * 0.2)
        dec[0].bias.fill_(0.5)
    cb = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, (h, w))
    with torch.no_grad():
        target = dec(cb[torch.from_numpy(true)].permute(2, 0, 1)[None]).clamp(0, 1)
    return dec, cb, true, target, rng


def test_refine_recovers_most_of_a_perturbed_grid():
    dec, cb, true, target, rng = linear_setup()
    start = true.copy()
    wrong = rng.random(true.shape) < 0.4
    start[wrong] = (true[wrong] + rng.integers(1, 16, wrong.sum())) % 16
    size = (true.shape[1] * 16, true.shape[0] * 16)
    out = refine(dec, cb, start, target, size, steps=20)
    e0, e1 = pixel_error(dec, cb, start, target, size), pixel_error(dec, cb, out, target, size)
    assert e1 < 0.3 * e0
    assert (out == true).mean() > (start == true).mean() + 0.2


def test_refine_never_raises_its_error_and_keeps_a_perfect_grid():
    dec, cb, true, target, _ = linear_setup(seed=1)
    size = (true.shape[1] * 16, true.shape[0] * 16)
    assert np.array_equal(refine(dec, cb, true, target, size), true)  # nothing to gain
    rng = np.random.default_rng(3)
    for _ in range(3):
        start = rng.integers(0, 16, true.shape)
        out = refine(dec, cb, start, target, size, steps=4)
        assert pixel_error(dec, cb, out, target, size) <= pixel_error(dec, cb, start, target, size)


def test_refine_changes_only_editable_positions_and_only_the_shown_area_counts():
    dec, cb, true, target, rng = linear_setup(seed=2)
    start = rng.integers(0, 16, true.shape)
    editable = rng.random(true.shape) < 0.5
    out = refine(dec, cb, start, target, (128, 96), steps=10, editable=editable)
    assert np.array_equal(out[~editable], start[~editable])
    assert (out[editable] != start[editable]).any()
    # the area outside `size` (padding) is not shown: tokens that only paint there stay
    out = refine(dec, cb, start, target, (64, 96), steps=10)
    assert np.array_equal(out[:, 4:], start[:, 4:])
    assert (out[:, :4] != start[:, :4]).any()


def test_rd_tokens_lower_the_decoded_error_and_round_trip(codec):
    img = photo(160, 128, seed=5)
    near, rd = codec.analyse(img, tokens="nearest"), codec.analyse(img, tokens="rd")
    tok = codec.model.tokenizer
    tn, tr = codec.tokens_for(near, 16), codec.tokens_for(rd, 16)
    assert np.array_equal(tn, tok.quantize(near["z"], 16)[0].numpy())
    assert (tn != tr).any()
    target = torch.from_numpy(rd["padded"].copy()).permute(2, 0, 1)[None].float() / 255
    dec = tok.fidelity_decoder(codec.model.fidelity)
    assert (pixel_error(dec, tok.codebook(16), tr, target, img.size)
            < pixel_error(dec, tok.codebook(16), tn, target, img.size))
    r = codec.encode_setting(rd, Setting(16, "entire"))
    tokens, _ = codec.decode_tokens(codec.read(r.data))
    assert np.array_equal(tokens, tr)
    assert codec.encode_setting(codec.analyse(img, tokens="rd"), Setting(16, "entire")).data == r.data


def test_large_grids_keep_the_nearest_codewords(codec, monkeypatch):
    img = photo(160, 128, seed=5)
    monkeypatch.setattr(codec_module, "REFINE_MAX_TOKENS", 79)  # the grid has 80 tokens
    a = codec.analyse(img, tokens="rd")
    assert np.array_equal(codec.tokens_for(a, 16), codec.model.tokenizer.quantize(a["z"], 16)[0].numpy())


def test_unknown_token_rule_is_refused(codec):
    from tokcodec.errors import ArgumentTypeError
    with pytest.raises(ArgumentTypeError, match="tokens must be one of rd, nearest"):
        codec.analyse(photo(), tokens="best")


def test_cli_token_rule(tmp_path, tiny_weights, codec):
    from test_cli import tokc
    img = photo(160, 128, seed=5)
    img.save(tmp_path / "in.png")
    outs = {}
    for rule in ("rd", "nearest"):
        p = tokc("encode", tmp_path / "in.png", tmp_path / f"{rule}.tkc", "--codebook", "16", "--mode", "entire",
                 "--no-correction", "--tokens", rule, weights=tiny_weights)
        assert p.returncode == 0, p.stderr.decode()
        outs[rule] = (tmp_path / f"{rule}.tkc").read_bytes()
    for rule, data in outs.items():
        tokens, _ = codec.decode_tokens(codec.read(data))
        assert np.array_equal(tokens, codec.tokens_for(codec.analyse(img, tokens=rule), 16))
    p = tokc("encode", tmp_path / "in.png", tmp_path / "x.tkc", "--tokens", "best", weights=tiny_weights)
    assert p.returncode == 2 and "--tokens" in p.stderr.decode()
    assert not (tmp_path / "x.tkc").exists()


def _drawn_error(codec, a, tokens, keep, k, cell=0):
    tok = codec.model.tokenizer
    full = codec.generate(tokens, keep, k, 0, 0.0) if not keep.all() else tokens
    target = torch.from_numpy(a["padded"].copy()).permute(2, 0, 1)[None].float() / 255
    return pixel_error(tok.fidelity_decoder(codec.model.fidelity), tok.codebook(k), full, target, a["size"], cell)


@pytest.mark.parametrize("mode,quantile,cell", [("checkerboard", 0.0, 0), ("edge", 0.2, 2), ("edge_more", 0.5, 0)])
def test_polish_lowers_what_the_decoder_draws_and_round_trips(codec, mode, quantile, cell, monkeypatch):
    """The final file's kept tokens, refined against the tokens the decoder generates from them:
    without the rate term the drawn error (less what a grid of `cell` restores) falls, the
    dropped positions are not coded, and the file decodes to the polished tokens."""
    monkeypatch.setattr(codec_module, "POLISH_LAMBDA", 0.0)
    monkeypatch.setattr(codec_module, "POLISH_MIN_GAIN", 0.0)
    img = photo(160, 128, seed=5)
    a = codec.analyse(img)
    s = Setting(16, mode, quantile)
    r = codec.encode_setting(a, s)
    r2, a2 = codec.polish(a, r, cell)
    assert r2.setting == s and r2.tokens_kept == r.tokens_kept
    before, after = codec.tokens_for(a, 16), a2["tokens"][16]
    _, keep = codec._mask(a, s, before.shape)
    assert (before != after)[keep].any()
    assert _drawn_error(codec, a, after, keep, 16, cell) < _drawn_error(codec, a, before, keep, 16, cell)
    tokens, keep2 = codec.decode_tokens(codec.read(r2.data))
    assert np.array_equal(keep2, keep) and np.array_equal(tokens[keep], after[keep])
    assert codec.tokens_for(a, 16) is before  # the analysis other targets share is unchanged
    monkeypatch.setattr(codec_module, "POLISH_MIN_GAIN", 1.0)  # no gain is worth an encode
    assert codec.polish(a, r, cell) is None


def test_polish_leaves_files_that_keep_most_tokens(codec, monkeypatch):
    monkeypatch.setattr(codec_module, "POLISH_MIN_GAIN", 0.0)
    a = codec.analyse(photo(160, 128, seed=5))
    for s in (Setting(16, "entire"), Setting(16, "edge", 0.5)):  # all, and 75% of the tokens kept
        assert codec.polish(a, codec.encode_setting(a, s), 0) is None


def test_polished_files_fit_and_measure_no_worse(codec, monkeypatch):
    """Rate control keeps a polished file only if it fits and its own decode (realism 0) is
    better by PSNR less the colour term and no worse by MS-SSIM."""
    from tokcodec import metrics
    from tokcodec.ratecontrol import COLOUR_WEIGHT
    img = photo(160, 128, seed=5)
    rgb = np.asarray(img)

    def quality(data):
        out = codec.decode(data, realism=0.0)
        d = np.asarray(out).astype(np.float64) - rgb
        return (10 * np.log10(255 ** 2 / np.square(d).mean()) - COLOUR_WEIGHT * metrics.colour_error(rgb, np.asarray(out)),
                metrics.compare(img, out)["ms_ssim"])
    changed = 0
    for nbytes in (60, 90):
        polished = codec.encode(img, nbytes=nbytes).data
        with monkeypatch.context() as m:
            m.setattr(codec_module, "POLISH_ROUNDS", 0)
            plain = codec.encode(img, nbytes=nbytes).data
        assert len(polished) <= nbytes and len(plain) <= nbytes
        if polished != plain:
            changed += 1
            (q1, m1), (q0, m0) = quality(polished), quality(plain)
            assert q1 > q0 and m1 >= m0 - 1e-9
    assert changed  # at 60 bytes the polished file is kept


def test_codebooks_that_cannot_fit_are_not_refined(codec, monkeypatch):
    """Rate control sizes a codebook with its nearest codewords before refining it: one whose
    nearest-codeword file clearly overflows is ruled out without the refinement, and the file
    is the one the full search gives."""
    from tokcodec import ratecontrol
    img = photo(320, 256, seed=5)
    a = codec.analyse(img)
    r = codec.encode_analysed(a, 80)  # K=64's smallest file with nearest codewords: 94 bytes
    assert r.setting.codebook == 16 and 64 not in a["tokens"] and 64 in a["nearest"]
    monkeypatch.setattr(ratecontrol, "ROUGH_MARGIN", float("inf"))
    full = codec.analyse(img)
    assert codec.encode_analysed(full, 80).data == r.data and 64 in full["tokens"]


def test_bounded_search_refines_fewer_codebooks_for_the_same_files(codec, monkeypatch):
    """Rate control bounds each group by its nearest-codeword sizes (`group_bounds`) and
    refines a codebook only when its bound can beat the best found: over a range of budgets the
    token search picks what the unbounded search picks, and somewhere it skips a refinement."""
    from tokcodec.codec import Codec
    img = photo(320, 256, seed=5)
    skipped = 0
    for nbytes in (100, 140, 200, 300):
        a = codec.analyse(img)
        got = codec.encode_tokens(a, nbytes)
        with monkeypatch.context() as m:
            m.setattr(Codec, "group_bounds", lambda self, a, groups, budget: None)
            b = codec.analyse(img)
            want = codec.encode_tokens(b, nbytes)
        assert got.setting == want.setting and got.data == want.data and len(got.data) <= nbytes
        assert set(a["tokens"]) <= set(b["tokens"])
        skipped += len(b["tokens"]) - len(a["tokens"])
    assert skipped
