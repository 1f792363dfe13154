"""tokc trim: a smaller valid file from a .tkc alone, keeping a subset of its tokens or a smaller
codebook of the ladder."""

import numpy as np
import pytest

import tokcodec
from tiny import photo


@pytest.fixture(scope="module")
def originals(codec):
    return {m: codec.encode(photo(320, 224, seed=5), None, None, 64, m, 0.6).data
            for m in ("entire", "edge", "edge_more", "checkerboard")}


@pytest.mark.parametrize("mode", ["entire", "edge", "edge_more", "checkerboard"])
@pytest.mark.parametrize("share", [0.9, 0.6])
def test_trimmed_file_fits_decodes_and_keeps_a_subset(codec, originals, mode, share):
    data = originals[mode]
    budget = int(len(data) * share)
    r = codec.trim(data, budget)
    assert len(r.data) <= budget
    old_tokens, old_keep = codec.decode_tokens(codec.read(data))
    new_tokens, new_keep = codec.decode_tokens(codec.read(r.data))  # a valid file: CRC and all
    assert not (new_keep & ~old_keep).any()  # nothing the original did not have
    if r.setting.codebook == 64:
        assert np.array_equal(new_tokens[new_keep], old_tokens[new_keep])
    else:  # the ladder: each codeword's nearest one in the smaller codebook
        import torch
        tok = codec.model.tokenizer
        codes = tok.embed(torch.from_numpy(np.where(old_keep, old_tokens, 0))[None], 64)
        want = tok.quantize(codes, r.setting.codebook)[0].numpy()
        assert np.array_equal(new_tokens[new_keep], want[new_keep])
    assert codec.decode(r.data).size == (320, 224)


def test_a_file_that_fits_is_unchanged(codec, originals):
    data = originals["edge"]
    assert codec.trim(data, len(data)).data == data


def test_trim_can_drop_the_last_stages_and_edge_blocks(codec, originals):
    """From an entire file, enough bytes less gives checkerboard or edge modes (later stages
    dropped) rather than only a smaller codebook."""
    modes = {codec.trim(originals["entire"], int(len(originals["entire"]) * s)).setting.mode
             for s in (0.7, 0.5, 0.35)}
    assert modes - {"entire"}


def test_unreachable_budget_and_bad_arguments(codec, originals):
    with pytest.raises(tokcodec.CodecError, match="cannot be reached"):
        codec.trim(originals["checkerboard"], 10)
    with pytest.raises(tokcodec.ArgumentError, match="nbytes"):
        codec.trim(originals["edge"], 0)
    with pytest.raises(tokcodec.FormatError):
        codec.trim(originals["edge"][:-1], 100)
