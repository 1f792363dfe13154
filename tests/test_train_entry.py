"""The training entry point imports (it broke once when rate control moved to its own module)."""

import subprocess
import sys

from conftest import ROOT


def test_training_commands_import_and_list_their_subcommands():
    p = subprocess.run([sys.executable, "-m", "tokcodec.train", "--help"], capture_output=True, text=True,
                       cwd=ROOT / "src", timeout=120)
    assert p.returncode == 0, p.stderr
    for cmd in ("tokenizer", "prior", "realism", "quality", "decoder", "export-decoder", "tokens", "export-prior"):
        assert cmd in p.stdout


def test_decoder_training_runs_and_its_export_is_the_decoder_new_files_name(tmp_path, tiny_weights):
    """`train decoder` on a few crops (standalone entry, as on a GPU machine without the codec's
    other dependencies), then `export-decoder`: the weights load with decoder 1 and files name it."""
    import shutil

    import numpy as np

    from tiny import photo
    from tokcodec import container
    from tokcodec.codec import Codec
    for split, n in (("train", 3), ("val", 2)):
        (tmp_path / split).mkdir()
        for i in range(n):
            photo(64, 64, seed=i + 10 * len(split)).save(tmp_path / split / f"{i}.png")
    env = {"PYTHONPATH": str(ROOT / "src")}
    p = subprocess.run([sys.executable, "-m", "tokcodec.train.decoder", "--weights", str(tiny_weights / "tokc.safetensors"),
                        "--data", str(tmp_path / "train"), "--val", str(tmp_path / "val"), "--out", str(tmp_path / "run"),
                        "--steps", "3", "--batch", "2", "--crop", "48", "--threads", "1", "--lr", "1e-2",
                        "--warmup", "1", "--ema", "0"], capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, **env})
    assert p.returncode == 0, p.stderr
    assert "val base" in p.stdout and (tmp_path / "run" / "raw.safetensors").is_file()
    ckpt = tmp_path / "run" / ("fidelity.safetensors" if (tmp_path / "run" / "fidelity.safetensors").is_file()
                               else "ema.safetensors")
    w = tmp_path / "w"
    w.mkdir()
    shutil.copy(tiny_weights / "tokc.safetensors", w / "tokc.safetensors")
    p = subprocess.run([sys.executable, "-m", "tokcodec.train", "export-decoder", "--ckpt", str(ckpt),
                        "--weights", str(w / "tokc.safetensors"), "--out", str(w / "fidelity.safetensors")],
                       capture_output=True, text=True, timeout=300, env={**__import__("os").environ, **env})
    assert p.returncode == 0, p.stderr
    c = Codec(str(w), "cpu")
    assert c.model.fidelity == 1
    data = c.encode(photo(96, 64, seed=4), nbytes=200).data
    assert container.unpack(data).header.decoder == 1
    assert np.asarray(c.decode(data)).shape == (64, 96, 3)


def test_prior_file_route_tokens_training_and_export(tmp_path, tiny_weights):
    """Packed token grids from shipped weights, a shallower prior warm-started from the base
    file's, then `export-prior`: the weights load it, new files name it, and it codes them."""
    import os
    import shutil

    import numpy as np

    from tiny import photo
    from tokcodec.codec import Codec
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        photo(320, 288, seed=i).save(photos / f"{i}.png")
    w = tmp_path / "w"
    w.mkdir()
    shutil.copy(tiny_weights / "tokc.safetensors", w / "tokc.safetensors")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

    def train(*args):
        p = subprocess.run([sys.executable, "-m", "tokcodec.train", *args], capture_output=True, text=True,
                           timeout=300, env=env)
        assert p.returncode == 0, p.stderr
        return p.stdout
    tokens = tmp_path / "tokens.npz"
    assert "8 grids per K" in train("tokens", "--ckpt", str(w / "tokc.safetensors"), "--data", str(photos),
                                    "--out", str(tokens), "--device", "cpu")
    out = train("prior", "--tokens", str(tokens), "--out", str(tmp_path / "run"), "--steps", "2", "--holdout", "2",
                "--batch", "4", "--tied", "--depth", "1", "--dim", "16", "--heads", "2", "--mlp", "32",
                "--window", "4", "--init", str(w / "tokc.safetensors"), "--device", "cpu")
    assert "initialised from the prior" in out and "final val bits/token" in out
    out = train("export-prior", "--prior", str(tmp_path / "run" / "last.pt"), "--weights",
                str(w / "tokc.safetensors"), "--out", str(w / "prior.safetensors"))
    c, base = Codec(str(w), "cpu"), Codec(str(tiny_weights), "cpu")
    assert f"model id {c.model.model_id.hex()}" in out and c.model.prior.cfg.depth == 1
    assert c.model.base_id == base.model.model_id != c.model.model_id
    data = c.encode(photo(96, 64, seed=4), nbytes=200).data
    assert c.read(data).header.model_id == c.model.model_id
    assert np.asarray(c.decode(data)).shape == (64, 96, 3)
