"""A/B of the exact prior: a saved copy of an older prior.py (OLD, default out/prior_old.py, e.g. `git show REV:src/tokcodec/prior.py > out/prior_old.py`) against the current one: identical count tables and time per pass. python scripts/prior_ab.py [threads]"""
import sys, time, torch, importlib.util
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
from tokcodec.weights import load
from tokcodec import prior as NEW
spec = importlib.util.spec_from_file_location("prior_old", "out/prior_old.py"); OLD = importlib.util.module_from_spec(spec); sys.modules["prior_old"] = OLD; spec.loader.exec_module(OLD)
m = load(None); pn = m.prior
po = OLD.ExactPrior(pn.cfg, {k: v for k, v in pn.t.items()})
g = torch.Generator().manual_seed(0)
for (h, w, K) in ((32, 48, 256), (30, 44, 16), (13, 21, 1024), (48, 32, 64)):
    tok = torch.randint(0, K, (h, w), generator=g); tok[torch.rand(h, w, generator=g) < 0.5] = K
    pos = torch.arange(h * w)
    a, b = po.counts(tok, K, pos), pn.counts(tok, K, pos)
    assert torch.equal(a, b), (h, w, K)
    to, tn = [], []
    for _ in range(4):
        t0 = time.perf_counter(); po.counts(tok, K, pos); to.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); pn.counts(tok, K, pos); tn.append(time.perf_counter() - t0)
    print(h, w, K, "identical; old %.3f new %.3f s (median of 4), ratio %.2f" % (sorted(to)[2], sorted(tn)[2], sorted(tn)[2] / sorted(to)[2]))
