"""The tokc command as a user runs it: exit codes, one-line errors, no partial outputs."""

import json
import os
import subprocess
import sys

import pytest

from tiny import photo


def tokc(*args, stdin: bytes | None = None, weights=None, cwd=None):
    env = dict(os.environ)
    if weights is not None:
        env["TOKC_WEIGHTS"] = str(weights)
    p = subprocess.run([sys.executable, "-m", "tokcodec.cli", *map(str, args)], input=stdin,
                       capture_output=True, env=env, cwd=cwd, timeout=300)
    return p


def assert_clean_failure(p, code=1):
    err = p.stderr.decode()
    assert p.returncode == code, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_weights):
    d = tmp_path_factory.mktemp("cli")
    photo(200, 130).save(d / "in.png")
    p = tokc("encode", d / "in.png", d / "a.tkc", "--bpp", "0.2", weights=tiny_weights)
    assert p.returncode == 0, p.stderr.decode()
    return d


def test_encode_decode_and_info(files, tiny_weights):
    d = files
    p = tokc("decode", d / "a.tkc", d / "a.png", "--seed", "7", weights=tiny_weights)
    assert p.returncode == 0, p.stderr.decode()
    from PIL import Image
    assert Image.open(d / "a.png").size == (200, 130)
    p = tokc("info", "--json", d / "a.tkc")
    info = json.loads(p.stdout)
    for key in ("width", "height", "bytes", "bpp", "codebook", "mode", "tokens_total", "tokens_kept",
                "token_bits", "model_id", "format_version"):
        assert key in info
    assert info["bytes"] == (d / "a.tkc").stat().st_size and info["bpp"] <= 0.2


@pytest.mark.parametrize("ext,magic", [(".jpg", b"\xff\xd8"), (".webp", b"RIFF"), (".png", b"\x89PNG")])
def test_output_format_follows_extension(files, tiny_weights, ext, magic):
    out = files / f"b{ext}"
    assert tokc("decode", files / "a.tkc", out, weights=tiny_weights).returncode == 0
    assert out.read_bytes().startswith(magic)


def test_pipeline_through_stdin_and_stdout(files, tiny_weights):
    png = (files / "in.png").read_bytes()
    enc = tokc("encode", "-", "-", "--bpp", "0.2", stdin=png, weights=tiny_weights)
    assert enc.returncode == 0 and enc.stdout.startswith(b"\x89TKC")
    dec = tokc("decode", "-", "-", stdin=enc.stdout, weights=tiny_weights)
    assert dec.returncode == 0 and dec.stdout.startswith(b"\x89PNG")


def damaged(files):
    good = (files / "a.tkc").read_bytes()
    flip = bytearray(good)
    flip[len(good) // 2] ^= 0x10
    return {
        "truncated": good[: len(good) - 3],
        "bitflip": bytes(flip),
        "random": os.urandom(300),
        "empty": b"",
        "renamed_png": (files / "in.png").read_bytes(),
    }


@pytest.mark.parametrize("kind", ["truncated", "bitflip", "random", "empty", "renamed_png"])
def test_bad_files_rejected_without_output(files, tiny_weights, kind):
    bad = files / f"{kind}.tkc"
    bad.write_bytes(damaged(files)[kind])
    out = files / f"{kind}.png"
    p = tokc("decode", bad, out, weights=tiny_weights)
    assert_clean_failure(p)
    assert not out.exists()
    assert not [f for f in os.listdir(files) if f.endswith(".part")]


def test_non_image_and_missing_inputs(files, tiny_weights):
    (files / "notes.txt").write_text("not an image")
    p = tokc("encode", files / "notes.txt", files / "n.tkc", weights=tiny_weights)
    assert_clean_failure(p)
    assert "not an image" in p.stderr.decode() and not (files / "n.tkc").exists()
    assert_clean_failure(tokc("encode", files / "missing.png", files / "m.tkc", weights=tiny_weights))
    assert_clean_failure(tokc("decode", files / "missing.tkc", files / "m.png", weights=tiny_weights))


def test_unreachable_bpp(files, tiny_weights):
    p = tokc("encode", files / "in.png", files / "u.tkc", "--bpp", "0.0005", weights=tiny_weights)
    assert_clean_failure(p)
    assert "smallest setting gives" in p.stderr.decode() and not (files / "u.tkc").exists()


def test_wrong_weights(files, fresh_weights):
    p = tokc("decode", files / "a.tkc", files / "w.png", weights=fresh_weights)
    assert_clean_failure(p)
    assert "model" in p.stderr.decode() and not (files / "w.png").exists()


def test_usage_errors_exit_2(files, tiny_weights):
    p = tokc("encode", files / "in.png", files / "x.tkc", "--mode", "bogus", weights=tiny_weights)
    assert p.returncode == 2
    p = tokc("encode", files / "in.png", files / "x.tkc", "--bpp", "0.1", "--bytes", "100", weights=tiny_weights)
    assert p.returncode == 2
    p = tokc("decode", files / "a.tkc", files / "x.unknownext", weights=tiny_weights)
    assert_clean_failure(p)


def test_never_overwrites_input(files, tiny_weights):
    before = (files / "in.png").read_bytes()
    p = tokc("encode", files / "in.png", files / "in.png", weights=tiny_weights)
    assert_clean_failure(p)
    assert (files / "in.png").read_bytes() == before
