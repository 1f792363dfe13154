"""Batch conversion of files and folders: one model load, progress, skip/overwrite, a summary
of failures. The CLI calls `run_batch`; each file goes through the same code as a single file."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .imageio import FORMATS

IMAGE_EXTS = set(FORMATS) | {".jfif", ".heic", ".avif", ".tga"}


@dataclass
class Job:
    src: Path
    dst: Path
    error: str | None = None  # set when the job cannot run (an output name shared with another)


@dataclass
class Report:
    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0


def plan(inputs: list[str], out_dir: Path, exts: set[str], suffix: str, recursive: bool) -> list[Job]:
    """Map inputs (files or folders) to output paths under out_dir. Folders keep their
    structure with --recursive; otherwise only their top level is taken. An input listed
    twice is converted once. Output names follow `name_outputs`."""
    jobs, seen = [], set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = p.rglob("*") if recursive else p.iterdir()
            pairs = [(f, f.relative_to(p)) for f in sorted(found) if f.is_file() and f.suffix.lower() in exts]
        else:
            pairs = [(p, Path(p.name))]
        for f, rel in pairs:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                jobs.append(Job(f, out_dir / rel.with_suffix(suffix)))
    return name_outputs(jobs, suffix)


def name_outputs(jobs: list[Job], suffix: str) -> list[Job]:
    """The naming rule for clashes: inputs that would share an output name (photo.jpg and
    photo.png -> photo.tkc) all keep their extension instead (photo.jpg.tkc, photo.png.tkc);
    names are compared ignoring case, as some file systems do. A name still shared after that
    (the same file name from two input folders) goes to the first input in order; the others
    fail with a message, so no input is ever skipped silently."""
    def by_name(js):
        groups: dict[str, list[Job]] = {}
        for j in js:
            groups.setdefault(str(j.dst).casefold(), []).append(j)
        return [g for g in groups.values() if len(g) > 1]

    for group in by_name(jobs):
        for j in group:
            j.dst = j.dst.with_name(j.src.name + suffix)
    for first, *rest in by_name(jobs):
        for j in rest:
            j.error = (f"its output {j.dst} would also be the output of {first.src}; "
                       "convert them into different folders")
    return jobs


def _init_worker(threads: int | None) -> None:
    import torch
    torch.set_num_threads(threads or 1)


def _convert_in_worker(convert: Callable[[Path, Path], None], src: Path, dst: Path) -> str | None:
    """Run one conversion in a worker process; a failure comes back as its message (library
    exceptions need not survive pickling)."""
    try:
        convert(src, dst)
    except Exception as e:  # noqa: BLE001 - reported by the parent, the batch goes on
        return str(e) or type(e).__name__
    return None


def run_batch(jobs: list[Job], convert: Callable[[Path, Path], None], overwrite: bool,
              quiet: bool, label: str, workers: int = 1, threads: int | None = None) -> Report:
    """Convert every job; `convert(src, dst)` writes one output. With `workers` > 1 the
    conversions run in that many processes (spawned, each loading the model once, with
    `threads` CPU threads); `convert` must then be picklable (a module-level function or a
    functools.partial of one). Checks on names and existing outputs stay in this process."""
    rep = Report()
    t0 = time.perf_counter()
    show = not quiet and sys.stderr.isatty()
    progress = None
    if show:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        from rich.console import Console
        progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                            console=Console(stderr=True), transient=False)
        progress.start()
        task = progress.add_task(label, total=len(jobs), rate="")

    def advance():
        if progress is not None:
            el = time.perf_counter() - t0
            progress.update(task, advance=1, rate=f"{len(rep.done) / el * 60:.1f} img/min" if el > 0 else "")

    def ready(job: Job) -> bool:
        """Checks before converting; False when the job is skipped or failed already."""
        try:
            if job.error:
                raise ValueError(job.error)
            if job.dst.exists() and not overwrite:
                rep.skipped.append(job.src)
                return False
            if job.dst.resolve() == job.src.resolve():
                raise ValueError("output would overwrite the input")
            job.dst.parent.mkdir(parents=True, exist_ok=True)
            return True
        except Exception as e:  # noqa: BLE001 - every failure is reported, the batch goes on
            rep.failed.append((job.src, str(e) or type(e).__name__))
            return False

    def finished(job: Job, error: str | None) -> None:
        if error is None:
            rep.done.append(job.src)
            rep.bytes_in += job.src.stat().st_size
            rep.bytes_out += job.dst.stat().st_size
        else:
            rep.failed.append((job.src, error))
        advance()

    try:
        todo = []
        for job in jobs:
            if ready(job):
                todo.append(job)
            else:
                advance()
        if workers > 1 and len(todo) > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed
            with ProcessPoolExecutor(min(workers, len(todo)), multiprocessing.get_context("spawn"),
                                     _init_worker, (threads,)) as pool:
                futures = {pool.submit(_convert_in_worker, convert, j.src, j.dst): j for j in todo}
                try:
                    for f in as_completed(futures):
                        finished(futures[f], f.result())
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
        else:
            for job in todo:
                try:
                    convert(job.src, job.dst)
                    error = None
                except KeyboardInterrupt:
                    raise
                except Exception as e:  # noqa: BLE001 - every failure is reported, the batch goes on
                    error = str(e) or type(e).__name__
                finished(job, error)
    finally:
        if progress is not None:
            progress.stop()
    rep.seconds = time.perf_counter() - t0
    return rep
