"""Codec pipeline with the tiny test model: round trips, seeds, rate control, errors."""

import numpy as np
import pytest

from tiny import photo
from tokcodec import schedule
from tokcodec.codec import Codec, CodecError, Setting, describe
from tokcodec.container import unpack
from tokcodec.errors import TokcError
from tokcodec.ratecontrol import ESTIMATE_MARGIN, ESTIMATE_SLACK

GOLDEN = "golden_edge_k64.tkc"


@pytest.mark.parametrize("mode", ["entire", "edge", "edge_more", "checkerboard"])
def test_decoded_tokens_equal_encoded_tokens(codec, mode):
    img = photo(200, 130, seed=4)
    a = codec.analyse(img)
    r = codec.encode_setting(a, Setting(64, mode, 0.3))
    tokens, keep = codec.decode_tokens(codec.read(r.data))
    original = codec.tokens_for(a, 64)
    assert np.array_equal(tokens[keep], original[keep])
    assert (tokens[~keep] == 64).all()  # dropped positions are [MASK] until generated
    assert keep.sum() == r.tokens_kept == describe(r.data)["tokens_kept"]
    if mode in ("edge", "edge_more"):
        from tokcodec.mask import select_blocks
        assert describe(r.data)["edge_blocks"] == select_blocks(a["strength"], 0.3).sum()


def test_mode_fractions(codec):
    a = codec.analyse(photo(256, 192))
    kept = {m: codec.encode_setting(a, Setting(16, m, 0.0)).tokens_kept for m in
            ("entire", "edge", "edge_more", "checkerboard")}
    total = 16 * 12
    assert kept == {"entire": total, "edge": total // 2, "edge_more": total // 4, "checkerboard": total // 2}


def test_same_seed_same_bytes_and_seeds_differ_at_temperature_one(codec):
    r = codec.encode(photo(160, 96), None, None, 64, "edge_more", 0.0)
    a = codec.decode(r.data, seed=1, temperature=1.0).tobytes()
    b = codec.decode(r.data, seed=1, temperature=1.0).tobytes()
    c = codec.decode(r.data, seed=2, temperature=1.0).tobytes()
    assert a == b and a != c


def test_temperature_zero_ignores_seed(codec):
    r = codec.encode(photo(160, 96), None, None, 64, "edge_more", 0.0)
    assert codec.decode(r.data, seed=1).tobytes() == codec.decode(r.data, seed=99).tobytes()


@pytest.mark.parametrize("bpp", [0.05, 0.1, 0.2])
def test_file_at_or_under_target(codec, bpp):
    img = photo(320, 224)
    data = codec.encode(img, bpp).data
    assert 8 * len(data) / (320 * 224) <= bpp


def test_bytes_target(codec):
    img = photo(320, 224)
    assert len(codec.encode(img, nbytes=100).data) <= 100


def test_unreachable_target_names_the_floor(codec):
    with pytest.raises(CodecError, match="smallest setting gives"):
        codec.encode(photo(320, 224), 0.0001)


def test_output_size_matches_input_for_odd_sizes(codec):
    for w, h in [(1, 1), (31, 17), (33, 65)]:
        r = codec.encode(photo(w, h), None, None, 16, "entire")
        assert codec.decode(r.data).size == (w, h)


def test_model_mismatch_names_both_ids(codec, fresh_weights):
    r = codec.encode(photo(64, 64), None, None, 16, "entire")
    other = Codec(str(fresh_weights), "cpu")
    with pytest.raises(CodecError, match=codec.model.model_id.hex()):
        other.decode(r.data)


def test_golden_file_decodes_to_known_tokens(codec, tiny_weights):
    """A file made once with the tiny model: decoding is exact, so this holds on any machine."""
    data = (tiny_weights / GOLDEN).read_bytes()
    c = codec.read(data)
    tokens, keep = codec.decode_tokens(c)  # raises if the token CRC does not match
    assert keep.sum() == int((tiny_weights / (GOLDEN + ".kept")).read_text())
    assert unpack(data).header.mode == "edge"


def test_stage_cache_does_not_change_bytes(codec):
    img = photo(200, 130, seed=9)
    a = codec.analyse(img)
    first = codec.encode_setting(a, Setting(64, "edge", 0.5)).data
    codec.encode_setting(a, Setting(64, "edge_more", 0.2))
    again = codec.encode_setting(a, Setting(64, "edge", 0.5)).data
    fresh = codec.encode_setting(codec.analyse(img), Setting(64, "edge", 0.5)).data
    assert first == again == fresh


def test_schedule_used_matches_spec(codec):
    r = codec.encode(photo(200, 130), None, None, 16, "entire")
    g = unpack(r.data).header.grid
    assert schedule.n_stages(*g) >= 4


@pytest.mark.parametrize("effort", ["full", "fast"])  # fast: bfloat16 passes of the float twin
def test_size_estimate_is_within_the_rate_control_margin(codec, effort):
    img = photo(320, 224, seed=3)
    a = codec.analyse(img, effort=effort)
    for s in [Setting(k, m, q) for k in codec.model.codebooks
              for m, q in (("entire", 0.0), ("checkerboard", 0.0), ("edge", 0.4), ("edge_more", 0.7))]:
        real = len(codec.encode_setting(a, s).data)
        est = codec.estimate_bytes(a, s)
        # never below the exact size: rate control takes an estimate a word under the budget as fitting
        assert real <= est <= real * (1 + ESTIMATE_MARGIN) + ESTIMATE_SLACK, s


@pytest.mark.parametrize("nbytes", [90, 140, 220, 400])
def test_estimated_rate_control_picks_what_exact_search_picks(codec, nbytes):
    """Estimates only skip settings that are clearly over or under the budget, so the choice is
    the one a search on exact sizes makes (the same on every machine)."""
    img = photo(320, 224, seed=4)
    got = codec.encode(img, nbytes=nbytes, correct=False, scale=1.0)  # rate control at one scale
    a = codec.analyse(img)
    groups = sorted(codec.groups(None, None, None), key=lambda g: -codec.expected_quality(g[-1]))
    want = codec.search(groups, lambda s: len(codec.encode_setting(a, s).data) <= nbytes)
    assert got.setting == want
    assert len(got.data) <= nbytes


@pytest.mark.parametrize("grid", [(2, 2), (2, 18), (10, 16), (22, 6)])
def test_blank_grid_has_one_table_everywhere(codec, grid):
    """Stage 0 is decoded without a pass over the whole grid: on a grid of [MASK] every
    position's table equals the one computed on a 2x2 grid (exactly, borders included)."""
    import torch
    for k in codec.model.codebooks:
        ctx = torch.full(grid, k, dtype=torch.int64)
        full = codec.model.prior.counts(ctx, k, torch.arange(grid[0] * grid[1]))
        assert torch.equal(full, codec.blank_counts(k).expand(len(full), -1))


@pytest.mark.parametrize("seed", range(6))
def test_stage_tables_skip_the_pass_only_where_nothing_is_known(codec, seed):
    """Positions whose receptive field holds no known token get the blank table without a pass;
    every table still equals the full pass's, for known tokens at random places."""
    import torch
    rng = np.random.default_rng(seed)
    h, w = 2 * rng.integers(1, 20, 2)
    k = 16
    ctx = np.full((h, w), k, dtype=np.int64)
    for _ in range(rng.integers(1, 4)):
        ctx[rng.integers(0, h), rng.integers(0, w)] = rng.integers(0, k)
    pos = np.arange(h * w)
    full = codec.model.prior.counts(torch.from_numpy(ctx), k, torch.from_numpy(pos))
    assert torch.equal(codec._stage_counts(ctx, k, pos), full)
    sees = codec.sees_known(ctx != k, pos)
    blank = codec.blank_counts(k)[0]
    assert all(torch.equal(full[p], blank) for p in pos[~sees])
    if h * w > 64:
        assert (~sees).any()  # the shortcut is used


def test_large_grids_encode_stage_by_chunk_to_the_same_file(codec, monkeypatch):
    """From LARGE_GRID_TOKENS up, the encoder codes each stage chunk by chunk (a decoder's
    tables, none cached): the same bytes as the whole-stage tables, for any chunk size."""
    from tokcodec import codec as codec_module
    img = photo(200, 130, seed=6)
    want = codec.encode_setting(codec.analyse(img), Setting(64, "edge", 0.4)).data
    monkeypatch.setattr(codec_module, "LARGE_GRID_TOKENS", 1)
    for rows in (1, 7, 4096):
        monkeypatch.setattr(codec_module, "DECODE_ROWS", rows)
        a = codec.analyse(img)
        assert codec.encode_setting(a, Setting(64, "edge", 0.4)).data == want
        assert a["counts"].get(64, {}) == {}  # no stage tables kept


def test_large_stages_decode_in_chunks_to_the_same_tokens(codec, monkeypatch):
    """A decoder range-decodes a stage's kept tokens in chunks of DECODE_ROWS tables (bounded
    memory on photo-size grids): the same tokens for any chunk size, and a truncated payload is
    still refused with the file-damaged message."""
    from tokcodec import codec as codec_module
    img = photo(200, 130, seed=6)
    r = codec.encode_setting(codec.analyse(img), Setting(64, "edge", 0.4))
    want = codec.decode_tokens(codec.read(r.data))[0]
    for rows in (1, 3, 7):
        monkeypatch.setattr(codec_module, "DECODE_ROWS", rows)
        assert np.array_equal(codec.decode_tokens(codec.read(r.data))[0], want)
        assert np.array_equal(np.asarray(codec.decode(r.data)), np.asarray(codec.decode(r.data)))
        with pytest.raises(TokcError, match="damaged"):
            codec.decode(r.data[:-4])
