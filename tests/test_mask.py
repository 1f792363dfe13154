import numpy as np

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
