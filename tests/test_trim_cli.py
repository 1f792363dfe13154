"""`tokc trim` on the command line (needs the trim command in cli.py)."""

import os
import subprocess
import sys

import pytest

from tiny import photo
from tokcodec.codec import describe


@pytest.fixture(scope="module")
def originals(codec):
    return {"entire": codec.encode(photo(320, 224, seed=5), None, None, 64, "entire").data}


def tokc(*args, weights):
    env = dict(os.environ, TOKC_WEIGHTS=str(weights))
    return subprocess.run([sys.executable, "-m", "tokcodec.cli", *map(str, args)], capture_output=True,
                          env=env, timeout=300)


def test_cli_trim(originals, tmp_path, tiny_weights):
    src = tmp_path / "a.tkc"
    src.write_bytes(originals["entire"])
    p = tokc("trim", src, tmp_path / "b.tkc", "--bytes", len(originals["entire"]) // 2, "-v", weights=tiny_weights)
    assert p.returncode == 0, p.stderr.decode()
    assert (tmp_path / "b.tkc").stat().st_size <= len(originals["entire"]) // 2
    assert describe((tmp_path / "b.tkc").read_bytes())["width"] == 320
    p = tokc("trim", src, tmp_path / "c.tkc", "--bpp", 0.02, weights=tiny_weights)
    assert p.returncode == 0 and 8 * (tmp_path / "c.tkc").stat().st_size / (320 * 224) <= 0.02
    p = tokc("trim", src, tmp_path / "d.tkc", weights=tiny_weights)
    assert p.returncode == 2
    p = tokc("trim", src, tmp_path / "e.tkc", "--bytes", 5, weights=tiny_weights)
    assert p.returncode == 1 and "cannot be reached" in p.stderr.decode() and not (tmp_path / "e.tkc").exists()
