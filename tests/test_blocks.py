"""Edge-mode block choice (Codec.block_scores): rate-distortion ("rd", default) or edge strength.
That rd blocks leave less pixel error is checked with the shipped weights in test_real_photos.py."""

import numpy as np
import pytest
import torch

from tiny import photo
from tokcodec import mask
from tokcodec.codec import ArgumentTypeError, pad_image
from tokcodec.ratecontrol import Setting


def test_rd_scores_are_the_pixel_error_saved(codec):
    """A block's score is the fidelity decoder's squared error over the block with the tokens
    the decoder would draw there, minus the error with the true tokens (the encoder's own
    decodes: in bfloat16 where native, precision.py)."""
    img = photo(128, 64, seed=2)
    a = codec.analyse(img, "rd")
    scores = codec.block_scores(a, 16, "edge")
    assert scores.shape == (2, 4)
    tokens = codec.tokens_for(a, 16)
    base = mask.keep_mask("edge", tokens.shape, np.zeros((2, 4), dtype=bool))
    drawn = codec.generate(tokens, base, 16, 0, 0.0)
    padded = pad_image(a["rgb"]).astype(np.float64)

    def block_err(t):
        x = np.asarray(codec.render(t, 16, (128, 64), fast=True)).astype(np.float64)
        return ((x - padded) ** 2).sum(-1).reshape(2, 32, 4, 32).sum(axis=(1, 3))
    assert np.allclose(scores, block_err(drawn) - block_err(tokens))


def test_rd_and_edge_files_round_trip_at_the_target(codec):
    img = photo(192, 128, seed=7)
    for blocks in ("rd", "edge"):
        # nearest tokens: the file codes the analysis' tokens (rd files polish theirs for the
        # decoder; their round trip is in test_refine.py)
        r = codec.encode(img, nbytes=120, mode="edge", blocks=blocks, tokens="nearest")
        assert len(r.data) <= 120
        tokens, keep = codec.decode_tokens(codec.read(r.data))
        a = codec.analyse(img, blocks, tokens="nearest")
        assert np.array_equal(tokens[keep], codec.tokens_for(a, r.setting.codebook)[keep])


def test_unknown_block_choice_is_refused(codec):
    with pytest.raises(ArgumentTypeError, match="blocks must be one of rd, edge"):
        codec.analyse(photo(), "best")


def test_large_grids_fall_back_to_edge_strength(codec, monkeypatch):
    """RD scoring costs a generation and a pixel decode per codebook and mode; above
    RD_MAX_TOKENS the edge strength ranks the blocks."""
    import tokcodec.codec as codec_module
    img = photo(128, 64, seed=2)
    a = codec.analyse(img, "rd")
    assert not np.array_equal(codec.block_scores(a, 16, "edge"), a["strength"])
    monkeypatch.setattr(codec_module, "RD_MAX_TOKENS", 31)  # this image has 32 tokens
    a = codec.analyse(img, "rd")
    assert np.array_equal(codec.block_scores(a, 16, "edge"), a["strength"])


def test_groups_whose_smallest_setting_overflows_are_skipped_without_ranking_blocks(codec):
    # the smallest setting of an edge group (share 0) keeps no block, so it needs no ranking;
    # when it does not fit, no larger share fits either and the group costs one estimate
    img = photo(256, 192, seed=5)
    a = codec.analyse(img)
    k = max(codec.model.codebooks)
    budget = int(codec.estimate_bytes(a, Setting(k, "edge", 0.0))) - 8
    r = codec.encode_tokens(a, budget)
    assert len(r.data) <= budget
    assert (k, "edge") not in a.get("block_scores", {})


def test_large_images_are_encoded_in_windows_to_the_same_latent(codec, monkeypatch):
    """Grids over TILE_MAX_TOKENS run the tokenizer's encoder in windows with ENCODER_MARGIN
    tokens of context (bounded memory): the latent is that of one pass."""
    from tokcodec import codec as C
    padded = pad_image(np.asarray(photo(52 * 16 - 9, 44 * 16 - 3, seed=3)))
    whole = codec._latent(padded)
    monkeypatch.setattr(C, "TILE_MAX_TOKENS", 0)
    monkeypatch.setattr(C, "TILE", 12)
    tiled = codec._latent(padded)
    assert tiled.shape == whole.shape and torch.allclose(tiled, whole, atol=1e-5)
    monkeypatch.setattr(C, "ENCODER_MARGIN", 0)
    assert not torch.allclose(codec._latent(padded), whole, atol=1e-3)
