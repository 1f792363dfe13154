"""The prior's training entry (`python -m tokcodec.train prior`): a few steps on random token
grids run, checkpoint and validate on the same held-out crops every time."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from conftest import ROOT


def grids(n: int = 6, seed: int = 0) -> dict[int, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {k: [torch.randint(0, k, (12 + i, 14), generator=g, dtype=torch.int16) for i in range(n)] for k in (64, 16)}


def test_validation_measures_the_same_crops_at_every_call():
    from tokcodec.prior import Prior, PriorConfig
    from tokcodec.train.prior import held_out, validate
    held = held_out(grids(), crop=8, n=2, batch=4)
    again = held_out(grids(), crop=8, n=2, batch=4)
    assert all(torch.equal(a, b) for k in held for x, y in zip(held[k], again[k]) for a, b in zip(x, y))
    torch.manual_seed(0)
    model = Prior(PriorConfig(dim=16, depth=1, heads=2, mlp=32, window=4, codebooks=(64, 16)))
    first = validate(model, held, torch.device("cpu"))
    assert first == validate(model, held, torch.device("cpu")) and set(first) == {64, 16}
    assert all(0 < b < 10 for b in first.values())  # random tokens: about log2 K bits, not 0 or inf


def test_a_short_prior_run_checkpoints_and_reports_held_out_bits(tmp_path):
    torch.save({"grids": grids()}, tmp_path / "tokens.pt")
    p = subprocess.run([sys.executable, "-m", "tokcodec.train", "prior", "--tokens", str(tmp_path / "tokens.pt"),
                        "--out", str(tmp_path / "run"), "--steps", "3", "--crop", "8", "--batch", "4",
                        "--holdout", "2", "--val-batches", "2", "--dim", "16", "--depth", "1", "--heads", "2",
                        "--mlp", "32", "--window", "4", "--device", "cpu"],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert p.returncode == 0, p.stderr
    assert "final val bits/token K=64:" in p.stdout and (tmp_path / "run" / "last.pt").is_file()
