"""Issue 16's reproducers, timed through the CLI (whole process: start, model load, refusal).

    .venv/bin/python scripts/hostile_files.py [kodak.png] [--slow]

Builds each hostile file in a temporary folder, runs `tokc decode` and `tokc info` on it, and
prints the exit code, the wall time and the one-line message. The mutated-Kodak cases need a
real photo (default ../shared/data/kodak/kodim03.png) and are skipped without one; --slow adds
the one case that still runs the prior (a file with neither a correction nor a mask check).
"""
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tokcodec import container
from tokcodec.codec import get_codec
from tokcodec.container import Container, Header, pack, unpack

TOKC = str(Path(sys.executable).with_name("tokc"))


def empty(w, h, mode="entire", k=1024, payload=b""):
    model = get_codec(None, "cpu").model.model_id
    return pack(Container(Header(w, h, model, k, mode, 0, schedule_id=1, coder_id=2), payload))


def run(args):
    t = time.perf_counter()
    p = subprocess.run([TOKC, *args], capture_output=True, text=True)
    return p.returncode, time.perf_counter() - t, (p.stderr.strip().splitlines() or [""])[-1]


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    photo = Path(args[0] if args else "../shared/data/kodak/kodim03.png")
    cases = {"28-byte 8000x8000, empty payload": empty(8000, 8000),
             "28-byte 65535x976, empty payload": empty(65535, 976),
             "28-byte 1536x1024, empty payload": empty(1536, 1024)}
    cases["1x1 edge file, payload eight 0xFF bytes"] = empty(1, 1, "edge", 64, b"\xff" * 8)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        if photo.exists():
            for extra in ([], ["--no-correction"]):
                out = d / "k.tkc"
                subprocess.run([TOKC, "encode", str(photo), str(out), "--bpp", "0.03", *extra], check=True,
                               capture_output=True)
                c = unpack(out.read_bytes())
                c.header.height = 16256
                what = f"{photo.stem} at 0.03 bpp{' ' + extra[0] if extra else ''}"
                cases[f"{what} (format 1.{c.header.minor}) declaring 768x16256"] = pack(c)
                if extra and "--slow" in sys.argv:  # neither a correction nor a mask check
                    c.header.minor, c.header.mask_check = 1, None
                    cases[f"{what}, the same as a 1.1 file declaring 768x16256"] = pack(c)
        else:
            print(f"({photo} not found: the mutated-photo cases are skipped)")
        for name, data in cases.items():
            f = d / "x.tkc"
            f.write_bytes(data)
            rc, sec, msg = run(["decode", str(f), str(d / "x.png"), "--max-pixels", "100000000"])
            rci, seci, _ = run(["info", str(f), "--max-pixels", "100000000"])
            print(f"{name}: {len(data)} bytes | decode exit {rc} in {sec:.2f} s | info exit {rci} in "
                  f"{seci:.2f} s | {msg}", flush=True)


if __name__ == "__main__":
    main()
