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
