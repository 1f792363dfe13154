"""The tokc command as a user runs it: exit codes, one-line errors, no partial outputs."""

import io
import json
import os
import pty
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import photo


def tokc(*args, stdin: bytes | None = None, weights=None, cwd=None, umask: int = -1):
    env = dict(os.environ)
    if weights is not None:
        env["TOKC_WEIGHTS"] = str(weights)
    p = subprocess.run([sys.executable, "-m", "tokcodec.cli", *map(str, args)], input=stdin,
                       capture_output=True, env=env, cwd=cwd, timeout=300, umask=umask)
    return p


def tokc_on_terminal(*args, weights):
    """Run tokc with stdout on a pseudo-terminal: (exit code, bytes it wrote there, stderr)."""
    master, slave = pty.openpty()
    env = {**os.environ, "TOKC_WEIGHTS": str(weights)}
    p = subprocess.Popen([sys.executable, "-m", "tokcodec.cli", *map(str, args)], stdout=slave,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    out = bytearray()
    while True:  # drain as it writes (a pty holds only a few kB), until the child closes it
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: no writer left
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    err = p.stderr.read().decode()
    return p.wait(timeout=300), bytes(out), err


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
        "renamed_tiff": image_data("TIFF"),
    }


def image_data(fmt: str) -> bytes:
    buf = io.BytesIO()
    photo(40, 30).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["truncated", "bitflip", "random", "empty", "renamed_png", "renamed_tiff"])
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


# ---------------------------------------------------------------- issue 18: what a new user trips over
def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_outputs_respect_the_umask(files, tiny_weights):
    for umask, want in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        out = files / f"umask{umask:o}.tkc"
        assert tokc("encode", files / "in.png", out, "--bpp", "0.1", "-q", weights=tiny_weights,
                    umask=umask).returncode == 0
        assert mode_of(out) == want
        png = files / f"umask{umask:o}.png"
        assert tokc("decode", out, png, weights=tiny_weights, umask=umask).returncode == 0
        assert mode_of(png) == want


def test_replacing_a_file_keeps_its_permissions(files, tiny_weights):
    out = files / "kept.tkc"
    out.write_bytes(b"old")
    out.chmod(0o640)
    assert tokc("encode", files / "in.png", out, "--bpp", "0.1", "-q", weights=tiny_weights,
                umask=0o022).returncode == 0
    assert out.read_bytes().startswith(b"\x89TKC") and mode_of(out) == 0o640


def bad_places(d: Path) -> dict:
    (d / "a_file").write_bytes(b"x")
    return {"missing folder": (d / "nonexistent" / "out.{ext}", 1, "does not exist"),
            "under a file": (d / "a_file" / "out.{ext}", 1, "is not a folder"),
            "a folder": (d, 2, "is a folder")}


@pytest.mark.parametrize("place", ["missing folder", "under a file", "a folder"])
@pytest.mark.parametrize("cmd", ["encode", "decode"])
def test_bad_output_place_fails_before_any_work(files, tmp_path, cmd, place):
    out, code, says = bad_places(tmp_path)[place]
    src, ext = (files / "in.png", "tkc") if cmd == "encode" else (files / "a.tkc", "png")
    # weights that do not exist: loading the model first would fail with a weights error instead
    p = tokc(cmd, src, str(out).format(ext=ext), weights=tmp_path / "no-weights")
    assert_clean_failure(p, code)
    assert says in p.stderr.decode()


def test_output_that_is_the_input_is_refused_before_any_work(files, tmp_path):
    before = (files / "in.png").read_bytes()
    p = tokc("encode", files / "in.png", files / "in.png", weights=tmp_path / "no-weights")
    assert_clean_failure(p)
    assert "input" in p.stderr.decode() and (files / "in.png").read_bytes() == before


def test_unwritable_folder_fails_before_any_work(files, tmp_path, monkeypatch):
    """A folder that refuses new files: one line naming it, before the model is loaded. Run in
    process with file creation refused there (a chmod would not stop root)."""
    import tempfile

    from click.testing import CliRunner

    from tokcodec import cli
    ro = tmp_path / "ro"
    ro.mkdir()
    real = tempfile.mkstemp

    def refuse(*a, dir=None, **kw):
        if dir is not None and Path(dir) == ro:
            raise PermissionError(13, "Permission denied")
        return real(*a, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setenv("TOKC_WEIGHTS", str(tmp_path / "no-weights"))
    for args in (["encode", str(files / "in.png"), str(ro / "x.tkc")],
                 ["decode", str(files / "a.tkc"), str(ro / "x.png")],
                 ["encode", str(files / "in.png"), "-o", str(ro)]):
        r = CliRunner().invoke(cli.main, args)
        assert r.exit_code == 1, r.output
        assert r.output.strip().splitlines() == [f"tokc: error: cannot write into folder {ro}: Permission denied"]
    assert not list(ro.iterdir())


@pytest.mark.parametrize("cmd", ["encode", "decode"])
def test_binary_data_not_written_to_a_terminal(files, tiny_weights, cmd):
    src, magic = (files / "in.png", b"\x89TKC") if cmd == "encode" else (files / "a.tkc", b"\x89PNG")
    code, out, err = tokc_on_terminal(cmd, src, "-", "--bpp" if cmd == "encode" else "--seed", "1",
                                      weights=tiny_weights)
    assert code == 1 and out == b"" and "terminal" in err and len(err.strip().splitlines()) == 1
    code, out, err = tokc_on_terminal(cmd, src, "-", "--force", weights=tiny_weights)
    assert code == 0, err
    assert out.startswith(magic)  # (the terminal may translate line ends further on)


def test_target_above_the_richest_setting_gets_a_note(files, tiny_weights):
    """--bpp far above what the richest setting needs: the richest file, and a one-line note
    saying why it is smaller; --strict makes it an error; -q silences the note."""
    p = tokc("encode", files / "in.png", files / "cap5.tkc", "--bpp", "5", weights=tiny_weights)
    assert p.returncode == 0
    err = p.stderr.decode().strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tokc: note: ") and "smaller than the target --bpp 5" in err[0]
    assert "richest setting" in err[0] and "--strict" in err[0]
    p = tokc("encode", files / "in.png", files / "cap10.tkc", "--bytes", "100000", "-q", weights=tiny_weights)
    assert p.returncode == 0 and p.stderr == b""
    assert (files / "cap10.tkc").read_bytes() == (files / "cap5.tkc").read_bytes()
    p = tokc("encode", files / "in.png", files / "strict.tkc", "--bpp", "5", "--strict", weights=tiny_weights)
    assert_clean_failure(p)
    assert "--strict" in p.stderr.decode() and not (files / "strict.tkc").exists()


def test_reachable_target_gets_no_note(files, tiny_weights):
    p = tokc("encode", files / "in.png", files / "fit.tkc", "--bpp", "0.02", "--strict", weights=tiny_weights)
    assert p.returncode == 0 and p.stderr == b""
    assert 8 * (files / "fit.tkc").stat().st_size / (200 * 130) <= 0.02


@pytest.mark.parametrize("size", [(1, 1), (17, 9)])
def test_tiny_images_get_the_smallest_file_at_the_default_target(tmp_path, tiny_weights, size):
    src = tmp_path / "tiny.png"
    photo(*size).save(src)
    p = tokc("encode", src, tmp_path / "t.tkc", weights=tiny_weights)
    assert p.returncode == 0, p.stderr.decode()
    err = p.stderr.decode().strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tokc: note: ") and "smallest file" in err[0]
    assert tokc("decode", tmp_path / "t.tkc", tmp_path / "t.png", weights=tiny_weights).returncode == 0
    from PIL import Image
    assert Image.open(tmp_path / "t.png").size == size
    # an explicit target, or --strict, is a promise: unreachable is an error
    for extra in (["--bpp", "0.03"], ["--strict"]):
        p = tokc("encode", src, tmp_path / "u.tkc", *extra, weights=tiny_weights)
        assert_clean_failure(p)
        assert "cannot be reached" in p.stderr.decode() and not (tmp_path / "u.tkc").exists()


def test_bad_TOKC_WEIGHTS_is_an_error(files, tmp_path, tiny_weights):
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "nonexistent", tmp_path / "empty"):
        p = tokc("decode", files / "a.tkc", tmp_path / "x.png", weights=bad)
        assert_clean_failure(p)
        assert "TOKC_WEIGHTS" in p.stderr.decode() and str(bad) in p.stderr.decode()
        assert not (tmp_path / "x.png").exists()
    # --weights comes first, as a command-line option does
    p = tokc("decode", files / "a.tkc", tmp_path / "x.png", "--weights", tiny_weights, weights=tmp_path / "nonexistent")
    assert p.returncode == 0, p.stderr.decode()


def test_unreadable_images_are_named_plainly(files, tiny_weights):
    (files / "empty.png").write_bytes(b"")
    (files / "garbage.png").write_bytes(b"\x00not an image at all" * 10)
    for name, says in (("empty.png", "empty.png is empty"), ("garbage.png", "garbage.png is not an image"),
                       ("a.tkc", "a.tkc is a .tkc file, not an image")):
        p = tokc("encode", files / name, files / "e.tkc", weights=tiny_weights)
        assert_clean_failure(p)
        assert says in p.stderr.decode() and "BytesIO" not in p.stderr.decode()
    p = tokc("encode", "-", "-", stdin=b"", weights=tiny_weights)
    assert_clean_failure(p)
    assert "stdin is empty" in p.stderr.decode()


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP", "GIF", "WEBP"])
def test_renamed_images_get_a_hint(files, tiny_weights, fmt):
    bad = files / f"renamed_{fmt}.tkc"
    bad.write_bytes(image_data(fmt))
    for args in (("decode", bad, files / "r.png"), ("info", bad)):
        p = tokc(*args, weights=tiny_weights)
        assert_clean_failure(p)
        assert f"is a {fmt} image, not a .tkc file" in p.stderr.decode() and "tokc encode" in p.stderr.decode()


def test_seed_is_documented_and_inert_at_temperature_0(files, tiny_weights):
    help_text = " ".join(tokc("decode", "--help").stdout.decode().split())
    assert "--temperature > 0" in help_text and "--realism > 0" in help_text
    outs = []
    for seed in ("1", "2"):
        out = files / f"seed{seed}.png"
        assert tokc("decode", files / "a.tkc", out, "--seed", seed, "--realism", "0",
                    weights=tiny_weights).returncode == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_readme_uses_seed_only_where_it_matters():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for line in readme.splitlines():
        if "--seed" in line and line.lstrip().startswith("tokc "):
            assert re.search(r"(--temperature|-t|--realism) [0-9.]*[1-9]", line), line
        if "seed=" in line and "tokcodec.decode(" in line:
            assert re.search(r"(temperature|realism)=[0-9.]*[1-9]", line), line


def test_readme_installs_the_torch_the_makefile_pins():
    root = Path(__file__).resolve().parents[1]
    pin = re.search(r"torch==([0-9.]+)", (root / "Makefile").read_text()).group(1)
    readme = (root / "README.md").read_text()
    assert f"pip install torch=={pin} --index-url https://download.pytorch.org/whl/cpu" in readme


def test_threads_option(files, tiny_weights):
    outs = []
    for n in ("1", "2"):
        out = files / f"threads{n}.tkc"
        assert tokc("encode", files / "in.png", out, "--bpp", "0.1", "-q", "--threads", n,
                    weights=tiny_weights).returncode == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]  # the bitstream does not depend on the thread count
    assert tokc("decode", files / "a.tkc", files / "t.png", "--threads", "0", weights=tiny_weights).returncode == 2


def test_threads_option_sets_torch_threads(files, tiny_weights, monkeypatch):
    import torch
    from click.testing import CliRunner

    from tokcodec import cli
    monkeypatch.setenv("TOKC_WEIGHTS", str(tiny_weights))
    before = torch.get_num_threads()
    try:
        for n, want in (("3", 3), (None, cli.default_threads())):
            torch.set_num_threads(5)
            extra = ["--threads", n] if n else []
            r = CliRunner().invoke(cli.main, ["decode", str(files / "a.tkc"), str(files / "tt.png"), *extra])
            assert r.exit_code == 0, r.output
            assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(before)


def test_batch_default_is_one_worker_per_two_cores_sharing_them(monkeypatch):
    from tokcodec import cli
    for cores, workers, threads in ((1, 1, 1), (2, 1, 2), (3, 1, 3), (4, 2, 2), (8, 4, 2), (16, 4, 4)):
        monkeypatch.setattr(cli, "default_threads", lambda cores=cores: cores)
        w = cli.n_workers(None, 100)
        assert (w, cli.worker_threads(None, w)) == (workers, threads)
    assert cli.n_workers(None, 1) == 1 and cli.n_workers(3, 2) == 2  # never more than the files
    assert cli.worker_threads(None, 3) == 5 and cli.worker_threads(2, 3) == 2  # 16 cores; --threads wins
