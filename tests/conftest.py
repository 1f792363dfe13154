import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import make_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """Folder holding the tiny model shipped with the tests (golden files depend on it)."""
    return DATA


@pytest.fixture(scope="session")
def fresh_weights(tmp_path_factory) -> Path:
    """A second, different random model (for model-id mismatch tests)."""
    d = tmp_path_factory.mktemp("w2")
    make_weights(d / "tokc.safetensors", seed=1)
    return d


@pytest.fixture(scope="session")
def codec(tiny_weights):
    from tokcodec.codec import Codec
    return Codec(str(tiny_weights), "cpu")
