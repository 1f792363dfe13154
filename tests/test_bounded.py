"""Work bounded by the payload (issue 16): a small file that declares a huge grid is refused
before the prior runs over that grid, and decoding stops where the payload runs out."""

import json
import os
import subprocess
import sys

import numpy as np
import torch
import pytest

import tokcodec
from tiny import photo
from tokcodec import schedule
from tokcodec.codec import Setting, describe
from tokcodec.container import Container, Header, pack, unpack

BIG = 64_000_000


@pytest.fixture
def passes(codec, monkeypatch):
    """Counts the prior's passes (`ExactPrior.hidden`, which encoder and decoder tables both
    run) over a grid larger than the 2x2 grid of the blank table."""
    seen = []
    real = codec.model.prior.hidden

    def counting(tokens, k, rows=None):
        if tokens.numel() > 4:
            seen.append(tuple(tokens.shape))
        return real(tokens, k, rows)

    monkeypatch.setattr(codec.model.prior, "hidden", counting)
    return seen


def hostile(codec, w, h, k, mode, payload=b"", coder=2):
    return pack(Container(Header(w, h, codec.model.model_id, k, mode, 0, coder_id=coder), payload))


@pytest.mark.parametrize("w,h", [(8000, 8000), (65535, 976), (1536, 1024), (1, 1)])
@pytest.mark.parametrize("mode", ["entire", "edge", "edge_more", "checkerboard"])
def test_empty_payload_is_refused_before_the_model(codec, passes, w, h, mode):
    data = hostile(codec, w, h, 16, mode)
    assert len(data) <= 30
    with pytest.raises(tokcodec.FormatError, match="too short"):
        codec.decode(data, max_pixels=BIG)
    with pytest.raises(tokcodec.FormatError, match="too short"):
        describe(data, BIG)
    assert passes == []


@pytest.mark.parametrize("words", [1, 2, 4, 8])
@pytest.mark.parametrize("mode", ["entire", "edge", "checkerboard"])
def test_short_payload_stops_before_any_pass_over_the_grid(codec, passes, words, mode):
    """Random words that pass the length check: stage 0 (and, in a grid this large, the stages
    after it) use the blank table, so the payload runs out before the first pass."""
    rng = np.random.default_rng(words)
    data = hostile(codec, 8000, 8000, 16, mode, rng.integers(0, 256, 4 * words, dtype=np.uint8).tobytes())
    with pytest.raises(tokcodec.TokcError, match="damaged|too short"):
        codec.decode(data, max_pixels=BIG)
    assert passes == []


def test_enlarged_grid_is_refused_before_the_prior_runs(codec, passes):
    """A 1.2 file whose header is made to declare a taller image (CRCs made valid again): its
    keep mask no longer matches the header's mask check, refused before any prior pass."""
    for mode in ("entire", "edge", "checkerboard"):
        c = unpack(codec.encode(photo(256, 160), None, None, 64, mode, correct=False).data)
        assert c.header.minor >= 2
        for factor in (2, 64):
            c2 = unpack(codec.encode(photo(256, 160), None, None, 64, mode, correct=False).data)
            c2.header.height *= factor
            passes.clear()  # (the encode ran the prior)
            # (an edge mode's longer block map may already run past the payload's end, or
            # read words that no range coder writes)
            refused = "mask check|payload ends|not a valid range-coder stream"
            with pytest.raises(tokcodec.CodecError, match=refused):
                codec.decode(pack(c2), max_pixels=BIG)
            with pytest.raises(tokcodec.TokcError, match=refused):
                describe(pack(c2), max_pixels=BIG)
            assert not passes


def test_enlarged_grid_stops_where_the_payload_runs_out(codec, passes):
    """The same in a 1.1 file (no mask check): decoding stops at the stage where its payload
    is used up, not after every stage (where the CRC would fail)."""
    c = unpack(codec.encode(photo(256, 160), None, None, 64, "entire", correct=False).data)
    c.header.height *= 64
    c.header.minor, c.header.mask_check = 1, None
    passes.clear()  # (the encode ran the prior)
    with pytest.raises(tokcodec.CodecError, match="payload ends|too short"):
        codec.decode(pack(c), max_pixels=BIG)
    assert 0 < len(passes) < schedule.n_stages(*c.header.grid) - 1


def test_enlarged_grid_with_a_correction_is_refused_before_the_prior_runs(codec, passes):
    """In a 1.1 file with a tone and colour correction, the correction's grid (read before the
    tokens) no longer fits the declared size: refused before any prior pass."""
    r = codec.encode(photo(256, 160, seed=9), nbytes=400)
    c = unpack(r.data)
    assert any(t == 2 for t, _ in c.header.extensions)
    c.header.height *= 64
    c.header.minor, c.header.mask_check = 1, None
    passes.clear()
    with pytest.raises(tokcodec.TokcError, match="correction"):
        codec.decode(pack(c), max_pixels=BIG)
    assert not passes


def test_a_stage_needs_room_for_its_most_likely_symbols(codec, passes):
    """Before a stage is decoded, its tables bound the bits it needs from below (each symbol's
    widest interval): a payload without that room is refused before the stage's symbols."""
    from tokcodec import entropy
    counts = torch.tensor([[1000, 1, 1, 1]] * 50)  # p(max) ~ 0.997: >= 0.0043 bits each
    assert entropy.min_bits(counts, 2) == pytest.approx(50 * -np.log2(1000 / 1003), rel=0.01)
    flat = torch.ones(20, 16, dtype=torch.int64)  # uniform: exactly 4 bits each, less rounding
    assert abs(entropy.min_bits(flat, 2) - 80) < 0.01


def test_valid_files_still_decode_with_the_same_tokens(codec):
    """The checks refuse nothing valid: every mode and K round-trips, tiny and large."""
    for size in [(1, 1), (96, 64), (700, 40)]:
        a = codec.analyse(photo(*size))
        for k in codec.model.codebooks:
            for mode in ["entire", "edge", "edge_more", "checkerboard"]:
                r = codec.encode_setting(a, Setting(k, mode, 0.5))
                tokens, keep = codec.decode_tokens(codec.read(r.data))
                assert np.array_equal(tokens[keep], codec.tokens_for(a, k)[keep])


def tokc(*args, weights=None):
    env = dict(os.environ)
    if weights is not None:
        env["TOKC_WEIGHTS"] = str(weights)
    return subprocess.run([sys.executable, "-m", "tokcodec.cli", *map(str, args)], capture_output=True,
                          env=env, timeout=300)


def test_cli_refuses_a_tiny_file_declaring_a_huge_image(codec, tmp_path, tiny_weights):
    f = tmp_path / "huge.tkc"
    f.write_bytes(hostile(codec, 8000, 8000, 16, "entire"))
    p = tokc("decode", f, tmp_path / "out.png", weights=tiny_weights)
    assert p.returncode == 1 and "too short" in p.stderr.decode()
    assert len(p.stderr.decode().strip().splitlines()) == 1 and not (tmp_path / "out.png").exists()
    assert tokc("info", f).returncode == 1


def test_cli_info_refuses_what_decode_refuses_and_names_what_it_did_not_check(codec, tmp_path):
    bad = tmp_path / "ff.tkc"  # issue 16: 1x1 edge mode, payload eight 0xFF bytes
    bad.write_bytes(hostile(codec, 1, 1, 16, "edge", b"\xff" * 8))
    p = tokc("info", bad)
    assert p.returncode == 1 and "Traceback" not in p.stderr.decode()
    odd = tmp_path / "coder.tkc"
    c = unpack(codec.encode(photo(64, 64), None, None, 16, "entire").data)
    c.header.coder_id = 7
    odd.write_bytes(pack(c))
    assert tokc("info", odd).returncode == 1
    good = tmp_path / "good.tkc"
    good.write_bytes(codec.encode(photo(64, 64), None, None, 16, "entire").data)
    p = tokc("info", "--json", good)
    assert p.returncode == 0
    assert "CRC" in json.loads(p.stdout)["not_checked"]
