"""Random numbers for sampled tokens (spec/FORMAT.md section 7): check values, and the legacy
generator of coder-1 files against the numpy stream it reproduces."""

import numpy as np
import pytest

import refdecoder as ref
from tokcodec import rng


def test_splitmix64_check_values():
    # SplitMix64 started at 0: the reference implementation's first outputs
    assert rng.splitmix64(0, np.arange(3)).tolist() == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    assert [ref.splitmix64(0, p) for p in range(3)] == rng.splitmix64(0, np.arange(3)).tolist()
    seed = 2 ** 64 - 1
    assert rng.splitmix64(seed, np.array([0, 10 ** 6])).tolist() == [ref.splitmix64(seed, 0), ref.splitmix64(seed, 10 ** 6)]


def test_multiply_shift_is_exact():
    g = np.random.default_rng(0)
    x = g.integers(0, 2 ** 63, 2000, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    total = g.integers(1, 2 ** 32, 2000)
    assert rng.below(x, total).tolist() == [(int(a) * int(t)) >> 64 for a, t in zip(x, total)]


@pytest.mark.parametrize("seed", [0, 1, 7, 2 ** 32 - 1, 2 ** 32, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1, 98765432123456789])
def test_legacy_generator_reproduces_numpy(seed):
    """Coder-1 files keep the tokens numpy's Generator(PCG64(seed)).integers(0, totals) gave; if a
    numpy release changes that stream, this test fails and tokc still gives the old tokens."""
    g = np.random.default_rng(seed)
    legacy, spec = rng.LegacyGenerator(seed), ref.LegacyPCG64(seed)
    numpy_gen = np.random.Generator(np.random.PCG64(seed))
    for call in range(5):
        totals = g.integers(2, 2 ** 20 + 1, size=int(g.integers(1, 30)))
        if call == 2:  # large totals: rejections are frequent
            totals = g.integers(2 ** 31, 2 ** 32 - 1, size=100)
        want = numpy_gen.integers(0, totals).tolist()
        assert [legacy.below(int(t)) for t in totals] == want
        assert [spec.below(int(t)) for t in totals] == want


def test_seed_range_is_checked():
    for bad in (-1, 2 ** 64, 1.5, True):
        with pytest.raises(ValueError, match="seed"):
            rng.check_seed(bad)
