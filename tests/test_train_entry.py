"""The training entry point imports (it broke once when rate control moved to its own module)."""

import subprocess
import sys

from conftest import ROOT


def test_training_commands_import_and_list_their_subcommands():
    p = subprocess.run([sys.executable, "-m", "tokcodec.train", "--help"], capture_output=True, text=True,
                       cwd=ROOT / "src", timeout=120)
    assert p.returncode == 0, p.stderr
    for cmd in ("tokenizer", "prior", "realism", "quality"):
        assert cmd in p.stdout
