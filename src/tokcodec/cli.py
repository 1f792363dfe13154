"""The `tokc` command line: a thin layer over tokcodec.codec.

Exit codes: 0 success, 1 data or runtime error (bad file, unreadable image, unreachable
target, model mismatch), 2 usage error. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from . import __version__
from .container import DEFAULT_MAX_PIXELS, MODES, FormatError, shown_size
from .imageio import (ImageError, atomic_write, check_writable_folder, format_for, image_bytes, image_format,
                      load_image)

DATA_ERRORS = (FormatError, ImageError, OSError, ValueError, RuntimeError)
DEFAULT_BPP = 0.03


def default_threads() -> int:
    """CPU threads for one conversion when --threads is not given: every core this process may
    run on. (Session 16, quiet 2-core machine, tokc encode/decode: two threads against one,
    kodim05 at 0.03 bpp 7.1-9.0 s against 10.2-10.5 s to encode; the 12-MP mosaic decoded in
    23 s against 37 s. The earlier default of one thread was measured beside a training job.)"""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class ScaleParam(click.ParamType):
    """--scale: `auto` (None) or a fraction in (0, 1]."""
    name = "scale"

    def convert(self, value, param, ctx):
        if value is None or value == "auto":
            return None
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not auto or a number", param, ctx)
        if not 0 < v <= 1:
            self.fail(f"{value} is not in (0, 1]: tokc codes the image at its size or smaller", param, ctx)
        return v


def fail(msg: str, code: int = 1):
    click.echo(f"tokc: error: {msg}", err=True)
    sys.exit(code)


def note(msg: str) -> None:
    click.echo(f"tokc: note: {msg}", err=True)


def display_name(path: str) -> str:
    return "stdin" if path == "-" else path


def check_input(path: str) -> None:
    if path == "-":
        return
    p = Path(path)
    if not p.exists():
        fail(f"{path}: no such file")
    if p.is_dir():
        fail(f"{path} is a folder; give a file")


def read_input(path: str) -> bytes:
    check_input(path)
    return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()


def check_output(path: str, inputs: tuple[str, ...], force: bool, what: str) -> None:
    """Fail now, before any work, where the output could not be written: binary data to a
    terminal, a folder given as the file name, the input itself, a folder that is missing or
    not writable."""
    if path == "-":
        if sys.stdout.isatty() and not force:
            fail(f"{what} not written to a terminal; redirect it or use -f")
        return
    out = Path(path)
    if out.is_dir():
        fail(f"{path} is a folder; give a file name, or -o {path} to convert into it", 2)
    for i in inputs:
        if i != "-" and out.exists() and Path(i).exists() and os.path.samefile(i, out):
            fail(f"refusing to overwrite the input file {path}")
    run_guarded(lambda: check_writable_folder(out.parent))


def prepare_output_dir(folder: str) -> None:
    """Batch mode: create the output folder (like mkdir -p) and check that it takes files."""
    def go():
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"cannot create folder {folder}: {e.strerror or e}") from None
        check_writable_folder(folder)
    run_guarded(go)


def write_output(path: str, data: bytes) -> None:
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    atomic_write(path, data)


def set_threads(n: int | None) -> None:
    import torch
    torch.set_num_threads(n or default_threads())


def unpack_checked(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS):
    """container.unpack, with a hint when the data is an image of any format Pillow reads."""
    from .container import unpack
    try:
        return unpack(data, max_pixels)
    except FormatError:
        kind = image_format(data) if data else None
        if kind:
            raise FormatError(f"{name} is a {kind} image, not a .tkc file "
                              "(did you mean `tokc encode`?)") from None
        raise


def run_guarded(fn):
    """Turn every expected failure into one line on stderr and exit code 1."""
    try:
        return fn()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except BrokenPipeError:  # the reader went away (`tokc info f.tkc | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
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
threads_opt = click.option("--threads", type=click.IntRange(1, 1024), default=None,
                           help="CPU threads for the networks (default: every core; the output does "
                                "not depend on it)")


def batch_or_single(paths: tuple[str, ...], output_dir: str | None):
    """(input, output) for a single conversion, or None for batch mode (needs -o)."""
    if output_dir is None:
        if len(paths) == 2 and not Path(paths[0]).is_dir():
            return paths
        raise click.UsageError("give INPUT OUTPUT for one file, or files/folders with -o OUTDIR")
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise click.UsageError(f"-o {output_dir} is not a folder")
    if "-" in paths:
        raise click.UsageError("- (stdin) cannot be used in batch mode")
    return None


def finish_batch(rep, quiet: bool, verb: str) -> None:
    if not quiet:
        rate = len(rep.done) / rep.seconds * 60 if rep.seconds else 0.0
        click.echo(f"{verb} {len(rep.done)} file(s), skipped {len(rep.skipped)} existing, "
                   f"{len(rep.failed)} failed ({rep.seconds:.1f} s, {rate:.1f} images/min)", err=True)
    for src, why in rep.failed:
        click.echo(f"tokc: failed: {src}: {why}", err=True)
    sys.exit(1 if rep.failed else 0)


batch_opts = [
    click.option("-o", "--output-dir", type=str, default=None, help="batch mode: write outputs into this folder"),
    click.option("-r", "--recursive", is_flag=True, help="batch mode: walk sub-folders, keeping their structure"),
    click.option("--overwrite", is_flag=True, help="batch mode: replace existing outputs (default: skip them)"),
    click.option("-q", "--quiet", is_flag=True, help="no notes, progress bar or summary"),
    click.option("-j", "--jobs", "n_jobs", type=click.IntRange(1, 64), default=None,
                 help="batch mode: files converted at once, each in its own process with --threads "
                      "threads (default: one per two CPU cores, at most 4, sharing the cores)"),
]


def with_options(opts):
    def deco(f):
        for o in reversed(opts):
            f = o(f)
        return f
    return deco


def n_workers(requested: int | None, n_files: int) -> int:
    """Worker processes for a batch: --jobs, else one per two CPU cores available (at most 4:
    each holds its own copy of the model), the cores shared among them (`worker_threads`);
    never more than there are files. (Session 17, quiet 2-core machine, the 24 Kodak images at
    0.03 bpp: one worker of two threads encoded them in 68.9 s, two workers of one thread in
    81.7 s, the same files; decoding took 12.2 and 12.4 s. The exact prior's passes and the
    pixel decoders now use two threads well, and one worker has no straggler to wait for.)"""
    if requested is None:
        requested = min(4, max(1, default_threads() // 2))
    return max(1, min(requested, n_files))


def worker_threads(threads: int | None, workers: int) -> int:
    """Threads per batch worker: --threads, else the available cores shared among the workers."""
    return threads or max(1, default_threads() // workers)


@dataclass(frozen=True)
class EncodeOptions:
    """What `tokc encode` was asked, for each file (picklable: batch workers get a copy)."""
    bpp: float | None
    nbytes: int | None
    k: int | None
    mode: str | None
    quantile: float | None
    given: bool
    strict: bool
    correct: bool
    quiet: bool
    verbose: bool
    weights: str | None
    device: str
    max_pixels: int
    blocks: str = "rd"
    tokens: str = "rd"
    scale: float | None = None
    effort: str = "full"


def encode_bytes(raw: bytes, name: str, o: EncodeOptions) -> bytes:
    from .codec import get_codec
    img = load_image(raw, o.max_pixels, name)
    r, msg = encode_to_target(get_codec(o.weights, o.device), img, name, o.bpp, o.nbytes, o.k, o.mode, o.quantile,
                              o.given, o.strict, o.correct, o.blocks, o.tokens, o.scale, o.effort)
    if msg and not o.quiet:
        note(msg)
    if o.verbose:
        w, h = img.size
        s = r.setting
        coded = f"coded at {r.coded_size[0]}x{r.coded_size[1]}, " if r.coded_size else ""
        click.echo(f"{name}: {w}x{h}, {len(r.data)} bytes = {8 * len(r.data) / (w * h):.4f} bpp | {coded}"
                   f"K={s.codebook} mode={s.mode} quantile={s.quantile:.2f} | kept {r.tokens_kept}/"
                   f"{r.tokens_total} tokens, {r.token_bits} payload bits ({r.info_bits:.0f} bits "
                   f"information, block map {r.mask_bits:.0f} bits)", err=True)
    return r.data


def encode_file(src: Path, dst: Path, opts: EncodeOptions) -> None:
    atomic_write(dst, encode_bytes(src.read_bytes(), str(src), opts))


@dataclass(frozen=True)
class DecodeOptions:
    """What `tokc decode` was asked, for each file (picklable: batch workers get a copy)."""
    seed: int
    temperature: float
    realism: float | None
    weights: str | None
    device: str
    max_pixels: int


def decode_bytes(data: bytes, target: str, name: str, o: DecodeOptions) -> bytes:
    unpack_checked(data, name, o.max_pixels)  # reject damaged files before loading the model
    from .codec import get_codec
    img = get_codec(o.weights, o.device).decode(data, o.seed, o.temperature, o.max_pixels, o.realism)
    return image_bytes(img, target)


def decode_file(src: Path, dst: Path, target: str, opts: DecodeOptions) -> None:
    atomic_write(dst, decode_bytes(src.read_bytes(), target, str(src), opts))


def encode_to_target(codec, img, name: str, bpp: float | None, nbytes: int | None, k: int | None,
                     mode: str | None, quantile: float | None, given: bool, strict: bool,
                     correct: bool = True, blocks: str = "rd", tokens: str = "rd", scale: float | None = None,
                     effort: str = "full"):
    """codec.encode, plus what the target meant: (result, note or None). Without --bpp/--bytes,
    an image too small for the default target (1x1, 17x9) gets the smallest file and a note.
    With a target above what the richest setting needs, the file is smaller than the target:
    a note (given targets), or an error with --strict."""
    from .codec import CodecError, TargetError
    w, h = img.size
    try:
        r = codec.encode(img, bpp, nbytes, k, mode, quantile, correct, blocks, tokens, scale, effort)
    except TargetError as e:
        if given or strict:
            raise
        r = e.smallest
        return r, (f"{name}: {w}x{h} is too small for the default {bpp:g} bpp; wrote the smallest file "
                   f"instead, {len(r.data)} bytes ({8 * len(r.data) / (w * h):.4f} bpp)")
    size = len(r.data)
    under = size < nbytes if nbytes is not None else bpp is not None and 8 * size / (w * h) < bpp
    richest = max((g[-1] for g in codec.groups(k, mode, quantile)), key=codec.expected_quality)
    if under and r.setting == richest and r.coded_size is None:
        target = (f"--bytes {nbytes}" if nbytes is not None else f"--bpp {bpp:g}" if given
                  else f"the default {bpp:g} bpp")
        s = r.setting
        why = (f"{name}: {size} bytes ({8 * size / (w * h):.4f} bpp), smaller than the target {target}, "
               f"because the richest setting (K={s.codebook}, mode {s.mode}) needs no more")
        if strict:
            raise CodecError(f"{why} (--strict)")
        if given:
            return r, f"{why}; --strict makes this an error"
    return r, None


@main.command()
@click.argument("paths", nargs=-1, required=True, type=str)
@click.option("--bpp", type=float, default=None, help=f"target bits per pixel (whole file); default {DEFAULT_BPP}")
@click.option("--bytes", "nbytes", type=int, default=None, help="target file size in bytes")
@click.option("--strict", is_flag=True,
              help="fail when the file cannot land at the target: above what the richest setting needs, "
                   "or (tiny images) below the smallest file")
@click.option("--codebook", "-k", type=click.Choice(["16", "64", "256", "1024"]), default=None,
              help="codebook size K (coarse rate knob)")
@click.option("--mode", type=click.Choice(MODES), default=None, help="which tokens are kept")
@click.option("--quantile", type=click.FloatRange(0, 1), default=None,
              help="share of 2x2-token blocks kept as edge blocks (edge modes)")
@click.option("--blocks", type=click.Choice(["rd", "edge"]), default="rd", show_default=True,
              help="how edge modes choose their blocks: pixel error saved (rd) or edge strength (edge)")
@click.option("--tokens", type=click.Choice(["rd", "nearest"]), default="rd", show_default=True,
              help="which codeword each position codes: chosen for the decoded pixels (rd) or the nearest "
                   "to the tokenizer's latent (nearest: faster encode)")
@click.option("--no-correction", "no_correction", is_flag=True,
              help="leave out the tone and colour correction (faster encode)")
@click.option("--scale", type=ScaleParam(), default="auto", show_default=True,
              help="code a smaller copy of the image, shown at full size by the decoder: a fraction of width "
                   "and height in (0, 1], or auto (rate control tries several; 1 is fastest)")
@click.option("--effort", type=click.Choice(["full", "fast"]), default="full", show_default=True,
              help="how hard rate control searches: full (coded scales, several correction grids, token "
                   "polish) or fast (2-4x faster below 0.015 bpp, 10-20% above, for 0.01-0.08 dB; for "
                   "large folders)")
@click.option("-f", "--force", is_flag=True, help="write a .tkc to a terminal anyway")
@click.option("-v", "--verbose", is_flag=True, help="print the chosen setting and sizes")
@with_options(batch_opts)
@weights_opt
@device_opt
@maxpix_opt
@threads_opt
def encode(paths, bpp, nbytes, strict, codebook, mode, quantile, blocks, tokens, no_correction, scale, effort, force,
           verbose, output_dir, recursive, overwrite, quiet, n_jobs, weights, device, max_pixels, threads):
    """Encode images to .tkc: `tokc encode IN OUT` (- for stdin/stdout), or
    `tokc encode FILES|FOLDERS... -o OUTDIR` for many files."""
    single = batch_or_single(paths, output_dir)
    if bpp is not None and nbytes is not None:
        raise click.UsageError("give --bpp or --bytes, not both")
    if bpp is not None and bpp <= 0 or nbytes is not None and nbytes <= 0:
        raise click.UsageError("the target must be positive")
    given = bpp is not None or nbytes is not None
    explicit = codebook is not None and mode is not None and mode in ("entire", "checkerboard")
    if not given and not explicit:
        bpp = DEFAULT_BPP
    k = int(codebook) if codebook else None
    opts = EncodeOptions(bpp, nbytes, k, mode, quantile, given, strict, not no_correction, quiet, verbose,
                         weights, device, max_pixels, blocks, tokens, scale, effort)
    if single:
        src, dst = single
        check_input(src)
        check_output(dst, (src,), force, "compressed data")
        set_threads(threads)
        run_guarded(lambda: write_output(dst, encode_bytes(read_input(src), display_name(src), opts)))
        return
    from .batch import IMAGE_EXTS, plan, run_batch
    jobs = plan(list(paths), Path(output_dir), IMAGE_EXTS, ".tkc", recursive)
    if jobs:
        prepare_output_dir(output_dir)
    set_threads(threads)
    workers = n_workers(n_jobs, len(jobs))
    rep = run_guarded(lambda: run_batch(jobs, functools.partial(encode_file, opts=opts), overwrite, quiet,
                                        "encode", workers=workers, threads=worker_threads(threads, workers)))
    finish_batch(rep, quiet, "encoded")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=str)
@click.option("--seed", type=click.IntRange(0, 2 ** 64 - 1), default=0, show_default=True,
              help="seed for regenerated detail; it matters only at --temperature > 0 (sampled tokens) "
                   "or --realism > 0 (the realism decoder's noise), otherwise every seed gives the "
                   "same image")
@click.option("--temperature", "-t", type=click.FloatRange(0, 5), default=0.0, show_default=True,
              help="token sampling for dropped tokens: 0 = most likely (the seed then has no "
                   "effect); higher = more varied tokens")
@click.option("--realism", type=click.FloatRange(0, 1), default=None,
              help="pixel decoder: 0 = fidelity (smooth, lowest distortion), 1 = most realistic "
                   "texture; default 0.6 with weights that have a realism decoder (times the coded "
                   "scale for a file coded smaller than it is shown), else 0")
@click.option("--format", "fmt", type=str, default=None,
              help="output format (png, jpg, webp...) when the name does not tell; batch default png")
@click.option("-f", "--force", is_flag=True, help="write image data to a terminal anyway")
@with_options(batch_opts)
@weights_opt
@device_opt
@maxpix_opt
@threads_opt
def decode(paths, seed, temperature, realism, fmt, force, output_dir, recursive, overwrite, quiet, n_jobs, weights,
           device, max_pixels, threads):
    """Decode .tkc files to images: `tokc decode IN OUT` (- for stdin/stdout; the format
    follows OUT's extension), or `tokc decode FILES|FOLDERS... -o OUTDIR`."""
    single = batch_or_single(paths, output_dir)
    opts = DecodeOptions(seed, temperature, realism, weights, device, max_pixels)
    if single:
        src, dst = single
        check_input(src)
        check_output(dst, (src,), force, "image data")
        target = run_guarded(lambda: format_for("x." + fmt.lower().lstrip(".")) if fmt else format_for(dst))
        data = run_guarded(lambda: read_input(src))
        run_guarded(lambda: unpack_checked(data, display_name(src), max_pixels))  # fails before torch loads
        set_threads(threads)
        run_guarded(lambda: write_output(dst, decode_bytes(data, target, display_name(src), opts)))
        return
    from .batch import plan, run_batch
    ext = "." + (fmt or "png").lower().lstrip(".")
    target = run_guarded(lambda: format_for("x" + ext))
    jobs = plan(list(paths), Path(output_dir), {".tkc"}, ext, recursive)
    if jobs:
        prepare_output_dir(output_dir)
    set_threads(threads)
    workers = n_workers(n_jobs, len(jobs))
    rep = run_guarded(lambda: run_batch(jobs, functools.partial(decode_file, target=target, opts=opts), overwrite,
                                        quiet, "decode", workers=workers, threads=worker_threads(threads, workers)))
    finish_batch(rep, quiet, "decoded")


@main.command()
@click.argument("input", type=str)
@click.argument("output", type=str)
@click.option("--bpp", type=click.FloatRange(0, min_open=True), default=None, help="target bits per pixel (whole file)")
@click.option("--bytes", "nbytes", type=click.IntRange(1), default=None, help="target file size in bytes")
@click.option("-f", "--force", is_flag=True, help="write a .tkc to a terminal anyway")
@click.option("-v", "--verbose", is_flag=True, help="print the setting kept and the sizes")
@weights_opt
@device_opt
@maxpix_opt
@threads_opt
def trim(input, output, bpp, nbytes, force, verbose, weights, device, max_pixels, threads):
    """Make a smaller copy of a .tkc file without the original image: `tokc trim IN OUT
    --bytes N | --bpp B`. Keeps a subset of its tokens (its first coding stages, fewer edge
    blocks) or a smaller codebook of the ladder; the decoder generates the rest."""
    if (bpp is None) == (nbytes is None):
        raise click.UsageError("give --bpp or --bytes")
    check_input(input)
    check_output(output, (input,), force, "compressed data")
    data = run_guarded(lambda: read_input(input))
    c = run_guarded(lambda: unpack_checked(data, display_name(input), max_pixels))
    w, h = shown_size(c.header)
    budget = nbytes if nbytes is not None else int(bpp * w * h / 8)
    set_threads(threads)

    def go():
        from .codec import get_codec
        r = get_codec(weights, device).trim(data, budget, max_pixels)
        if verbose:
            s = r.setting
            click.echo(f"{display_name(input)}: {len(data)} -> {len(r.data)} bytes "
                       f"({8 * len(r.data) / (w * h):.4f} bpp) | K={s.codebook} mode={s.mode} "
                       f"quantile={s.quantile:.2f} | kept {r.tokens_kept}/{r.tokens_total} tokens", err=True)
        write_output(output, r.data)

    run_guarded(go)


@main.command()
@click.argument("input", type=str)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@maxpix_opt
def info(input, as_json, max_pixels):
    """Describe a .tkc file (no model needed). Exits 1 on what decode would refuse that can be
    found without the model; `not_checked` names what only decode checks."""

    def go():
        from .codec import describe
        data = read_input(input)
        unpack_checked(data, display_name(input), max_pixels)
        d = describe(data, max_pixels)
        if as_json:
            click.echo(json.dumps(d))
        else:
            for k, v in d.items():
                click.echo(f"{k:>15}: {v}")

    run_guarded(go)


if __name__ == "__main__":
    main()
