import numpy as np
import torch

from tokcodec import entropy
from tokcodec.prior import COUNT_BITS, counts_from_logits, exp_table


def random_counts(n, k, seed=0):
    rng = np.random.default_rng(seed)
    logits = torch.from_numpy((rng.normal(size=(n, k)) * 600).astype(np.int64))
    return counts_from_logits(logits, exp_table())


def test_count_tables_are_valid():
    c = random_counts(500, 1024)
    assert c.min() >= 1
    assert int(c.sum(1).max()) <= 1 << COUNT_BITS


def test_round_trip_and_overhead_within_one_percent():
    rng = np.random.default_rng(1)
    counts = random_counts(4000, 256, seed=2)
    p = counts.numpy() / counts.numpy().sum(1, keepdims=True)
    sym = np.array([rng.choice(256, p=row) for row in p])
    enc = entropy.Encoder()
    enc.encode(sym, counts)
    data = enc.finish()
    info = entropy.information_bits(sym, counts)
    assert 8 * len(data) <= info * 1.01 + 32
    dec = entropy.Decoder(data)
    assert np.array_equal(dec.decode(counts), sym)


def test_binary_contexts_round_trip():
    rng = np.random.default_rng(3)
    bits = (rng.random(300) < 0.2).astype(int)
    enc = entropy.Encoder()
    m = entropy.BinaryContexts(2)
    for i, b in enumerate(bits):
        enc.encode_bit(int(b), m, i % 2)
    dec = entropy.Decoder(enc.finish())
    m = entropy.BinaryContexts(2)
    assert [dec.decode_bit(m, i % 2) for i in range(300)] == bits.tolist()


def test_binary_decisions_follow_the_coder_as_general_tables_do():
    """decode_bit builds coder 2's two-symbol table in plain integers: the same bits and the
    same followed coder state (hence the same truncation checks) as decoding each bit through
    the general count-table path, for both coders, followed by ordinary symbols."""
    rng = np.random.default_rng(4)
    bits = (rng.random(2000) < 0.1).astype(int)
    counts = random_counts(50, 64, seed=5)
    sym = rng.integers(0, 64, 50)
    for coder in (1, 2):
        enc, m = entropy.Encoder(coder), entropy.BinaryContexts(3)
        for i, b in enumerate(bits):
            enc.encode_bit(int(b), m, i % 3)
        enc.encode(sym, counts)
        data = enc.finish()
        fast, general = entropy.Decoder(data, coder), entropy.Decoder(data, coder)
        mf, mg = entropy.BinaryContexts(3), entropy.BinaryContexts(3)
        for i, b in enumerate(bits):
            assert fast.decode_bit(mf, i % 3) == b
            g = int(general.decode(mg.table(i % 3))[0])
            mg.update(i % 3, g)
            assert fast.capacity_bits() == general.capacity_bits()
        assert np.array_equal(fast.decode(counts), sym) and np.array_equal(general.decode(counts), sym)
        fast.finish()
        general.finish()


def test_sampling_is_seeded_and_follows_counts():
    from tokcodec.rng import LegacyGenerator, sample_at
    counts = np.array([[1, 1000000], [1000000, 1]] * 50)
    pos = np.arange(100)
    for draw in (lambda s: sample_at(counts, pos, s), lambda s: LegacyGenerator(s).sample(counts)):
        a, b = draw(5), draw(5)
        assert np.array_equal(a, b)
        assert (a == np.array([1, 0] * 50)).mean() > 0.95


def test_temperature_sharpens():
    logits = torch.tensor([[0, 256, 512]])
    hot = counts_from_logits(logits, exp_table(), 2000)[0]
    cold = counts_from_logits(logits, exp_table(), 250)[0]
    assert cold[2] / cold.sum() > hot[2] / hot.sum()


def test_one_row_broadcast_codes_as_the_repeated_rows():
    """A table broadcast over many symbols (np.broadcast_to, the correction grid's) is converted
    once; the words are those of the same rows written out."""
    rng = np.random.default_rng(9)
    row = rng.integers(1, 5000, (1, 253))
    sym = rng.integers(0, 253, 3000)
    words = []
    for counts in (np.broadcast_to(row, (3000, 253)), np.repeat(row, 3000, 0)):
        enc = entropy.Encoder()
        enc.encode(sym, counts)
        words.append(enc.finish())
    assert words[0] == words[1] and len(words[0]) > 100
    dec = entropy.Decoder(words[0])
    assert np.array_equal(dec.decode(np.broadcast_to(row, (3000, 253))), sym)
