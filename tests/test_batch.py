"""Folder conversion: failures are named and do not stop the batch; reruns skip."""

import os

from PIL import Image

from test_cli import tokc
from tiny import photo


def test_folder_with_a_broken_file(tmp_path, tiny_weights):
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.png", "b.jpg", "sub/c.png"]):
        photo(90, 60, seed=i).save(src / name)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    out = tmp_path / "out"
    p = tokc("encode", src, "-o", out, "--recursive", "--bpp", "0.3", weights=tiny_weights)
    assert p.returncode == 1
    err = p.stderr.decode()
    assert "broken.jpg" in err and "Traceback" not in err
    made = sorted(str(f.relative_to(out)) for f in out.rglob("*.tkc"))
    assert made == ["a.tkc", "b.tkc", "sub/c.tkc"]
    assert not [f for f in os.listdir(out) if f.endswith(".part")]

    p = tokc("encode", src, "-o", out, "--recursive", "--bpp", "0.3", weights=tiny_weights)
    assert "skipped 3" in p.stderr.decode()

    back = tmp_path / "back"
    p = tokc("decode", out, "-o", back, "-r", weights=tiny_weights)
    assert p.returncode == 0, p.stderr.decode()
    assert Image.open(back / "sub" / "c.png").size == (90, 60)


def test_batch_needs_an_output_folder(tmp_path, tiny_weights):
    photo(40, 40).save(tmp_path / "a.png")
    p = tokc("encode", tmp_path / "a.png", weights=tiny_weights)
    assert p.returncode == 2
