"""The `tokc` command line: a thin layer over tokcodec.codec.

Exit codes: 0 success, 1 data or runtime error (bad file, unreadable image, unreachable
target, model mismatch), 2 usage error. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from . import __version__
from .container import DEFAULT_MAX_PIXELS, MODES, FormatError
from .imageio import ImageError, atomic_write, format_for, image_bytes, load_image

DATA_ERRORS = (FormatError, ImageError, OSError, ValueError, RuntimeError)


def fail(msg: str, code: int = 1):
    click.echo(f"tokc: error: {msg}", err=True)
    sys.exit(code)


def read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    p = Path(path)
    if not p.exists():
        fail(f"{path}: no such file")
    if p.is_dir():
        fail(f"{path} is a folder; give a file")
    return p.read_bytes()


def write_output(path: str, data: bytes, inputs: tuple[str, ...] = ()) -> None:
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    out = Path(path)
    for i in inputs:
        if i != "-" and Path(i).exists() and out.exists() and os.path.samefile(i, out):
            fail(f"refusing to overwrite the input file {path}")
    if not out.parent.exists():
        fail(f"folder {out.parent} does not exist")
    atomic_write(out, data)


def run_guarded(fn):
    """Turn every expected failure into one line on stderr and exit code 1."""
    try:
        return fn()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except DATA_ERRORS as e:
        fail(str(e) or type(e).__name__)
    except MemoryError:
        fail("out of memory; try a smaller image or --max-pixels")
    except Exception as e:  # last resort: still one line, and a hint
        fail(f"unexpected {type(e).__name__}: {e} (please report this)")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tokc")
def main():
    """tokc: learned image codec for ultra-low bitrates (0.005-0.05 bits per pixel)."""


weights_opt = click.option("--weights", type=click.Path(), default=None,
                           help="weights file or folder (default: $TOKC_WEIGHTS, then the shipped ones)")
device_opt = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                          show_default=True, help="where the networks run; the bitstream is the same")
maxpix_opt = click.option("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, show_default=True,
                          help="refuse images larger than this")


@main.command()
@click.argument("input", type=str)
@click.argument("output", type=str)
@click.option("--bpp", type=float, default=None, help="target bits per pixel (whole file); default 0.03")
@click.option("--bytes", "nbytes", type=int, default=None, help="target file size in bytes")
@click.option("--codebook", "-k", type=click.Choice(["16", "64", "256", "1024"]), default=None,
              help="codebook size K (coarse rate knob)")
@click.option("--mode", type=click.Choice(MODES), default=None, help="which tokens are kept")
@click.option("--quantile", type=click.FloatRange(0, 1), default=None,
              help="share of 2x2-token blocks kept as edge blocks (edge modes)")
@click.option("-f", "--force", is_flag=True, help="write a .tkc to a terminal anyway")
@click.option("-v", "--verbose", is_flag=True, help="print the chosen setting and sizes")
@weights_opt
@device_opt
@maxpix_opt
def encode(input, output, bpp, nbytes, codebook, mode, quantile, force, verbose, weights, device, max_pixels):
    """Encode an image (any format Pillow reads; - for stdin) to a .tkc file (- for stdout)."""
    if bpp is not None and nbytes is not None:
        raise click.UsageError("give --bpp or --bytes, not both")
    if bpp is not None and bpp <= 0 or nbytes is not None and nbytes <= 0:
        raise click.UsageError("the target must be positive")
    if output == "-" and sys.stdout.isatty() and not force:
        fail("compressed data not written to a terminal; redirect it or use -f", 1)
    explicit = codebook is not None and mode is not None and mode in ("entire", "checkerboard")
    if bpp is None and nbytes is None and not explicit:
        bpp = 0.03

    def go():
        from .codec import get_codec
        img = load_image(read_input(input), max_pixels)
        codec = get_codec(weights, device)
        r = codec.encode(img, bpp, nbytes, int(codebook) if codebook else None, mode, quantile)
        write_output(output, r.data, (input,))
        if verbose:
            w, h = img.size
            s = r.setting
            click.echo(f"{w}x{h}: {len(r.data)} bytes = {8 * len(r.data) / (w * h):.4f} bpp | K={s.codebook} "
                       f"mode={s.mode} quantile={s.quantile:.2f} | kept {r.tokens_kept}/{r.tokens_total} "
                       f"tokens, {r.token_bits} payload bits ({r.info_bits:.0f} bits information, "
                       f"block map {r.mask_bits:.0f} bits)", err=True)

    run_guarded(go)


@main.command()
@click.argument("input", type=str)
@click.argument("output", type=str)
@click.option("--seed", type=int, default=0, show_default=True, help="seed for regenerated tokens")
@click.option("--temperature", "-t", type=click.FloatRange(0, 5), default=0.0, show_default=True,
              help="0 = most likely tokens (lowest distortion); higher = more texture")
@click.option("--format", "fmt", type=str, default=None, help="output format when it can't be told from the name")
@weights_opt
@device_opt
@maxpix_opt
def decode(input, output, seed, temperature, fmt, weights, device, max_pixels):
    """Decode a .tkc file (- for stdin) to an image; the format follows OUTPUT's extension."""

    def go():
        from .codec import get_codec
        target = fmt.upper() if fmt else format_for(output)
        data = read_input(input)
        from .container import unpack
        unpack(data, max_pixels)  # reject damaged files before loading the model
        img = get_codec(weights, device).decode(data, seed, temperature, max_pixels)
        write_output(output, image_bytes(img, target), (input,))

    run_guarded(go)


@main.command()
@click.argument("input", type=str)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def info(input, as_json):
    """Describe a .tkc file (no model needed)."""

    def go():
        from .codec import describe
        d = describe(read_input(input))
        if as_json:
            click.echo(json.dumps(d))
        else:
            for k, v in d.items():
                click.echo(f"{k:>15}: {v}")

    run_guarded(go)


if __name__ == "__main__":
    main()
