"""The exact prior: identical count tables whatever the thread count or batch layout."""

import subprocess
import sys

import torch

from tiny import PRIOR_CFG
from tokcodec.prior import ExactPrior, Prior, exp_table, quantize


def model(seed=0):
    torch.manual_seed(seed)
    p = Prior(PRIOR_CFG).eval()
    for b in p.blocks:
        b.rel.data.normal_(0, 0.5)
    return p


def test_exp_table_values():
    t = exp_table()
    assert t[0] == 1 << 16 and t[256] == 24109 and t[-1] == 0 and (t[1:] <= t[:-1]).all()


def test_exact_matches_float_model_closely():
    p = model()
    toks = torch.randint(0, 65, (12, 20))
    with torch.no_grad():
        lf = torch.log_softmax(p(toks[None], 64)[0].double(), -1)
    ex = ExactPrior(p.cfg, quantize(p))
    le = torch.log_softmax(ex.logits(ex.hidden(toks, 64).reshape(-1, 16), 64).double() / 256, -1)
    kl = (lf.reshape(-1, 64).exp() * (lf.reshape(-1, 64) - le)).sum(-1).mean()
    assert kl < 1e-3


SCRIPT = """
import sys, torch, hashlib
sys.path.insert(0, {tests!r})
from test_prior import model
from tokcodec.prior import ExactPrior, quantize
torch.set_num_threads(int(sys.argv[1]))
p = model()
ex = ExactPrior(p.cfg, quantize(p))
g = torch.Generator().manual_seed(3)
toks = torch.randint(0, 65, (24, 40), generator=g)
c = ex.counts(toks, 64, torch.arange(24 * 40))
print(hashlib.sha256(c.numpy().tobytes()).hexdigest())
"""


def test_tables_identical_across_thread_counts():
    import os
    tests = os.path.dirname(__file__)
    out = set()
    for n in (1, 2):
        env = dict(os.environ, OMP_NUM_THREADS=str(n), MKL_NUM_THREADS=str(n))
        r = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=tests), str(n)], capture_output=True,
                           env=env, timeout=600)
        assert r.returncode == 0, r.stderr.decode()
        out.add(r.stdout.strip())
    assert len(out) == 1


def test_counts_do_not_depend_on_which_positions_are_asked():
    p = model(1)
    ex = ExactPrior(p.cfg, quantize(p))
    toks = torch.randint(0, 65, (16, 16))
    allc = ex.counts(toks, 64, torch.arange(256))
    some = ex.counts(toks, 64, torch.tensor([5, 77, 200]))
    assert torch.equal(allc[[5, 77, 200]], some)


def test_features_at_rows_equal_the_whole_grid_at_those_rows(monkeypatch):
    """`hidden(tokens, k, rows)` runs the last block's projection and MLP on the rows asked
    only: the same integers as the whole grid's features at those rows, whether the last
    block's windows are shifted or not, with window padding and across work chunks."""
    import dataclasses

    import tokcodec.prior as P
    monkeypatch.setattr(P, "CHUNK", 48)  # several chunks per step on these grids
    g = torch.Generator().manual_seed(7)
    for depth in (1, 2, 3):
        torch.manual_seed(depth)
        p = Prior(dataclasses.replace(PRIOR_CFG, depth=depth)).eval()
        ex = ExactPrior(p.cfg, quantize(p))
        for h, w in [(13, 11), (16, 16)]:
            toks = torch.randint(0, 65, (h, w), generator=g)
            full = ex.hidden(toks, 64).reshape(-1, p.cfg.dim)
            rows = torch.randint(0, h * w, (60,), generator=g)  # unsorted, with repeats
            assert torch.equal(ex.hidden(toks, 64, rows), full[rows])
            assert not torch.equal(full[rows], full[rows.flip(0)])  # the rows are told apart
            assert ex.hidden(toks, 64, rows[:0]).shape == (0, p.cfg.dim)  # no rows asked: none given
            where = torch.zeros(h * w, dtype=torch.bool)
            where[rows] = True
            with torch.no_grad():  # the float model (size estimates) the same way
                want = p(toks[None], 64).reshape(-1, 64)[where]
                assert torch.allclose(p(toks[None], 64, where.view(1, h, w)), want, atol=1e-5)


def _both(p):
    t = quantize(p)
    return ExactPrior(p.cfg, t), ExactPrior(p.cfg, t, dtype=torch.int64)


def test_float64_evaluation_equals_the_int64_one():
    """The float64-held integers give the int64 evaluation's logits, on grids with and without
    window padding, with and without [MASK] (spec section 5: the same integers)."""
    fast, ref = _both(model(2))
    assert fast.dtype == torch.float64 and ref.dtype == torch.int64
    g = torch.Generator().manual_seed(5)
    for h, w in [(16, 24), (7, 13), (1, 1), (9, 2)]:
        for k in fast.cfg.codebooks:
            toks = torch.randint(0, k + 1, (h, w), generator=g)
            pos = torch.arange(h * w)
            assert torch.equal(fast.logits_at(toks, k, pos), ref.logits_at(toks, k, pos))


def test_float64_evaluation_used_only_where_its_bounds_hold():
    """Weights whose products could pass 2**52 in float64 are evaluated in int64."""
    t = quantize(model(3))
    cfg = model(3).cfg
    assert max(ExactPrior(cfg, t).float_bounds().values()) < ExactPrior.FLOAT_LIMIT
    big = dict(t)
    big["b0.fc1.m"] = t["b0.fc1.m"].to(torch.int64) * (1 << 28)  # multipliers of 2**50: acc * m passes 2**52
    ex = ExactPrior(cfg, big)
    assert ex.float_bounds()["scaled_product"] >= ExactPrior.FLOAT_LIMIT
    assert ex.dtype == torch.int64


def test_shipped_prior_runs_in_float64():
    from pathlib import Path

    import pytest
    path = Path(__file__).resolve().parents[1] / "weights" / "tokc.safetensors"
    if not path.is_file():
        pytest.skip("no shipped weights in this checkout")
    from tokcodec.weights import load
    ex = load(path).prior
    assert ex.dtype == torch.float64
    toks = torch.randint(0, 1025, (9, 11), generator=torch.Generator().manual_seed(1))
    ref = ExactPrior(ex.cfg, ex.t, dtype=torch.int64)
    assert torch.equal(ex.logits_at(toks, 1024, torch.arange(99)), ref.logits_at(toks, 1024, torch.arange(99)))


def test_large_grid_allocation_policy_changes_no_value(monkeypatch):
    """Grids from LARGE_GRID_TOKENS up run with freed blocks kept for reuse (memory.py); the
    logits must be those of the usual allocation, for the exact and the float evaluation."""
    import tokcodec.prior as P
    from tokcodec import memory
    p = model(4)
    fast, _ = _both(p)
    toks = torch.randint(0, 65, (10, 14), generator=torch.Generator().manual_seed(2))
    pos = torch.arange(140)
    want = fast.logits_at(toks, 64, pos)
    with torch.no_grad():
        want_twin = p(toks[None], 64)
    monkeypatch.setattr(P, "LARGE_GRID_TOKENS", 1)
    calls = []
    real = memory.reuse_large_blocks

    def spy(enabled=True):
        calls.append(enabled)
        return real(enabled)
    monkeypatch.setattr(P, "reuse_large_blocks", spy)
    assert torch.equal(fast.logits_at(toks, 64, pos), want)
    with torch.no_grad():  # a batch runs on whole grids (one image: by bands, no large blocks)
        assert torch.equal(p(toks[None].repeat(2, 1, 1), 64), want_twin.repeat(2, 1, 1, 1))
    assert calls == [True, True]


def test_float_inference_by_bands_equals_the_whole_grid(monkeypatch):
    """The float model on one image without gradients runs block by block in bands of window
    rows (`Block._bands`); it must give the whole-grid evaluation's values exactly (a batch of
    two runs on whole grids), in float32 and bfloat16, with and without `where`, on grids with
    and without window padding and over several bands. Rate control's size estimates and
    previews, hence its files, depend on these values."""
    import dataclasses

    import tokcodec.prior as P
    monkeypatch.setattr(P, "BAND_TOKENS", 100)  # bands of one or two window rows here
    g = torch.Generator().manual_seed(11)
    for depth in (1, 2, 3):
        torch.manual_seed(depth)
        p = Prior(dataclasses.replace(PRIOR_CFG, depth=depth)).eval()
        for b in p.blocks:
            b.rel.data.normal_(0, 0.5)
        for h, w in [(13, 11), (16, 16), (30, 6)]:
            toks = torch.randint(0, 65, (h, w), generator=g)
            where = torch.rand(1, h, w, generator=g) < 0.3
            for bf16 in (False, True):
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    whole = p(toks[None].repeat(2, 1, 1), 64)
                    assert torch.equal(p(toks[None], 64), whole[:1])
                    rows = p(toks[None], 64, where)
                    n = int(where.sum())
                    assert rows.shape == (n, 64)
                    assert torch.equal(rows, p(toks[None].repeat(2, 1, 1), 64, where.repeat(2, 1, 1))[:n])


def test_reuse_large_blocks_restores_the_allocator_even_on_errors(monkeypatch):
    """Thresholds raised inside, set back and the heap trimmed on leaving (also after an
    exception); nothing at all when disabled or where there is no glibc."""
    import pytest
    from tokcodec import memory
    log = []

    class FakeLibc:
        def mallopt(self, param, value):
            log.append(("mallopt", param, value))

        def malloc_trim(self, pad):
            log.append(("trim", pad))
    monkeypatch.setattr(memory, "_glibc", lambda: FakeLibc())
    with pytest.raises(RuntimeError):
        with memory.reuse_large_blocks():
            assert log == [("mallopt", memory.M_MMAP_THRESHOLD, memory.HELD_THRESHOLD),
                           ("mallopt", memory.M_TRIM_THRESHOLD, 2 * memory.HELD_THRESHOLD)]
            raise RuntimeError
    assert log[2:] == [("mallopt", memory.M_MMAP_THRESHOLD, memory.DEFAULT_MMAP_THRESHOLD),
                       ("mallopt", memory.M_TRIM_THRESHOLD, memory.DEFAULT_TRIM_THRESHOLD), ("trim", 0)]
    log.clear()
    with memory.reuse_large_blocks(False):
        pass
    monkeypatch.setattr(memory, "_glibc", lambda: None)
    with memory.reuse_large_blocks():
        pass
    assert log == []


def test_window_padding_is_zero():
    """`partition` pads the shifted grid with zeros (a NaN there would reach the outputs
    through the zero weight of a padding key), for several sides and shifts; the memory it
    allocates is first filled with NaN and freed, so that a strip left unwritten shows."""
    from tokcodec.prior import partition
    for h, w, shift in [(13, 11, 4), (16, 16, 4), (5, 9, 4), (9, 2, 0), (3, 16, 4)]:
        hp, wp = -(-(h + shift) // 8) * 8, -(-(w + shift) // 8) * 8
        poison = torch.full((1, hp, wp, 8), float("nan"), dtype=torch.float64)
        del poison
        x = torch.rand(1, h, w, 8, dtype=torch.float64) + 1
        xw, valid, _ = partition(x, 8, shift)
        rows, ok = xw.reshape(-1, 8), valid.reshape(-1)
        assert (rows[~ok] == 0).all() and (rows[ok] >= 1).all()
