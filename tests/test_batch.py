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


def test_name_clash_keeps_the_extensions(tmp_path, tiny_weights):
    """photo.jpg and photo.png (and Photo.GIF: names compare ignoring case) must not become
    one photo.tkc: every clashing input keeps its extension; other names stay short."""
    src = tmp_path / "photos"
    src.mkdir()
    names = ["photo.jpg", "photo.png", "Photo.GIF", "other.png"]
    for i, name in enumerate(names):
        photo(48 + 16 * i, 48).save(src / name)  # the width tells the images apart
    out = tmp_path / "out"
    p = tokc("encode", src, "-o", out, "--bpp", "0.3", weights=tiny_weights)
    assert p.returncode == 0, p.stderr.decode()
    assert sorted(f.name for f in out.iterdir()) == ["Photo.GIF.tkc", "other.tkc", "photo.jpg.tkc", "photo.png.tkc"]
    assert "encoded 4 file(s), skipped 0" in p.stderr.decode()

    back = tmp_path / "back"
    assert tokc("decode", out, "-o", back, weights=tiny_weights).returncode == 0
    decoded = ["photo.jpg.png", "photo.png.png", "Photo.GIF.png", "other.png"]
    assert sorted(f.name for f in back.iterdir()) == sorted(decoded)
    for i, name in enumerate(decoded):
        assert Image.open(back / name).size == (48 + 16 * i, 48)


def test_same_name_from_two_folders_is_reported_not_skipped(tmp_path, tiny_weights):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        photo(64, 48, seed=ord(d)).save(tmp_path / d / "x.png")
    out = tmp_path / "out"
    p = tokc("encode", tmp_path / "a", tmp_path / "b", tmp_path / "a" / "x.png", "-o", out, "--bpp", "0.3",
             weights=tiny_weights)
    err = p.stderr.decode()
    assert p.returncode == 1 and "Traceback" not in err
    assert "encoded 1 file(s), skipped 0 existing, 1 failed" in err  # a/x.png listed twice: one job
    assert f"failed: {tmp_path / 'b' / 'x.png'}:" in err and str(tmp_path / "a" / "x.png") in err
    assert [f.name for f in out.iterdir()] == ["x.png.tkc"]


def test_plan_names_clashes_only():
    from pathlib import Path

    from tokcodec.batch import Job, name_outputs
    jobs = [Job(Path("in/p.jpg"), Path("o/p.tkc")), Job(Path("in/p.png"), Path("o/p.tkc")),
            Job(Path("in/q.png"), Path("o/q.tkc"))]
    assert [str(j.dst) for j in name_outputs(jobs, ".tkc")] == ["o/p.jpg.tkc", "o/p.png.tkc", "o/q.tkc"]
    assert not any(j.error for j in jobs)


def test_output_folder_that_cannot_be_made_fails_before_any_work(tmp_path):
    photo(40, 40).save(tmp_path / "a.png")
    (tmp_path / "file").write_bytes(b"x")
    p = tokc("encode", tmp_path / "a.png", "-o", tmp_path / "file" / "out", weights=tmp_path / "no-weights")
    err = p.stderr.decode()
    assert p.returncode == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "cannot create folder" in err


def test_batch_outputs_respect_the_umask(tmp_path, tiny_weights):
    photo(40, 40).save(tmp_path / "a.png")
    p = tokc("encode", tmp_path / "a.png", "-o", tmp_path / "out", "-q", weights=tiny_weights, umask=0o027)
    assert p.returncode == 0, p.stderr.decode()
    assert os.stat(tmp_path / "out" / "a.tkc").st_mode & 0o777 == 0o640


def test_worker_processes_give_the_same_files_as_one_process(tmp_path, tiny_weights):
    """--jobs N converts files in N processes: same bytes and pixels as --jobs 1, failures
    still named, the summary still counts every file."""
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(4):
        photo(80 + 8 * i, 48, seed=10 + i).save(src / f"p{i}.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    outs = {}
    for jobs in ("1", "3"):
        out = tmp_path / f"out{jobs}"
        p = tokc("encode", src, "-o", out, "--bytes", "120", "--jobs", jobs, weights=tiny_weights)
        assert p.returncode == 1 and "broken.png" in p.stderr.decode() and "encoded 4 file(s)" in p.stderr.decode()
        back = tmp_path / f"back{jobs}"
        p = tokc("decode", out, "-o", back, "--jobs", jobs, "--realism", "0", weights=tiny_weights)
        assert p.returncode == 0, p.stderr.decode()
        outs[jobs] = ({f.name: f.read_bytes() for f in out.glob("*.tkc")},
                      {f.name: Image.open(f).tobytes() for f in back.glob("*.png")})
    assert len(outs["1"][0]) == 4 and len(outs["1"][1]) == 4
    assert outs["1"] == outs["3"]
