import numpy as np
import pytest

from tokcodec import entropy, mask


def test_edge_strength_finds_the_edge():
    img = np.zeros((64, 128, 3), np.uint8)
    img[:, 70:] = 255  # vertical edge inside block column 2
    s = mask.edge_strength(img)
    assert s.shape == (2, 4)
    assert s[:, 2].min() > 0 and s[:, 0].max() == 0


def test_quantile_selects_that_share_of_blocks():
    s = np.random.default_rng(0).random((8, 12))
    for q in (0.0, 0.25, 0.5, 1.0):
        b = mask.select_blocks(s, q)
        assert b.sum() == round(q * 96)
        if 0 < q < 1:
            assert s[b].min() >= s[~b].max()


def test_keep_mask_contains_base_pattern_and_blocks():
    blocks = np.zeros((4, 6), bool)
    blocks[1, 2] = True
    k = mask.keep_mask("edge_more", (8, 12), blocks)
    assert k[2:4, 4:6].all() and k[::2, ::2].all() and k.sum() == 24 + 3


def test_block_map_round_trip():
    blocks = np.random.default_rng(1).random((16, 24)) < 0.3
    enc = entropy.Encoder()
    bits = mask.encode_blocks(enc, blocks)
    assert 0 < bits < blocks.size
    dec = entropy.Decoder(enc.finish())
    assert np.array_equal(mask.decode_blocks(dec, blocks.shape), blocks)


@pytest.mark.parametrize("coder", entropy.CODERS)
def test_block_map_in_one_call_is_the_stream_coded_bit_by_bit(coder):
    """encode_blocks follows the adaptive model in plain integers and codes the map in one
    call: the same bytes and bits as coding it bit by bit through BinaryContexts (the decoder's
    way), on a map long enough that the model's counts are halved many times."""
    rng = np.random.default_rng(5)
    blocks = rng.random((48, 40)) < np.linspace(0.05, 0.6, 40)[None, :]
    ref, model, want_bits = entropy.Encoder(coder), entropy.BinaryContexts(4), 0.0
    for i in range(blocks.shape[0]):
        for j in range(blocks.shape[1]):
            ctx = 2 * (int(blocks[i - 1, j]) if i else 0) + (int(blocks[i, j - 1]) if j else 0)
            b = int(blocks[i, j])
            want_bits -= np.log2(model.c[ctx, b] / model.c[ctx].sum())
            ref.encode_bit(b, model, ctx)
    enc = entropy.Encoder(coder)
    bits = mask.encode_blocks(enc, blocks)
    assert enc.finish() == ref.finish()
    assert bits == pytest.approx(want_bits, rel=1e-12) and mask.block_bits(blocks) == bits
