"""`batch`: transcribe an archive on a Ray cluster (or a local Ray instance), resumably (the
`batch` extra; docs/batch.md).

Transcripts are written exactly as `transcribe` writes them (formats.write_transcript, same
options), one file at a time as workers finish, and each finished input goes into the ledger
at once: Ctrl-C or a crash loses nothing finished, and a rerun skips it. Exit code 0 when
every input was transcribed or skipped, 3 when some were bad, 1 when a worker hit a bug,
130 on Ctrl-C.
"""
from __future__ import annotations

import argparse
import signal
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Iterator

from ..bundle import EMBEDDED_BUNDLES, MANIFEST_NAME, sha256_of
from ..errors import InputError
from ..formats import FORMATS
from . import exit_codes
from .model_options import add_model_options, load_model
from .transcribe import add_transcription_options, format_list, transcription_options

DEFAULT_THREADS_PER_WORKER = 2


def _batch(args: argparse.Namespace) -> int:
    from ..batch import Job, Transcribed, expected_seconds, ray_session, run_jobs, start_workers  # the batch extra
    from ..batch_inputs import collect_inputs
    from ..batch_ledger import LEDGER_NAME, Ledger, LedgerEntry, settings_hash
    from ..batch_report import SUMMARY_NAME, BatchReport
    from ..bundle import load_bundle
    from ..formats import write_transcript

    if not args.format:
        raise InputError("--format names no format: a batch writes at least one")
    # SIGINT stops the batch cleanly even where it started ignored (a job started with `&` by a
    # script inherits that), so `kill -INT` always works, as Ctrl-C does on a terminal
    signal.signal(signal.SIGINT, signal.default_int_handler)
    bundle = load_bundle(args.bundle, args.verify)  # a broken bundle is refused before Ray starts
    settings = {**transcription_options(args), "formats": args.format, "device": args.device,
                "n_ctx": args.n_ctx, "parallel": args.parallel, "loop_guard": args.loop_guard}
    items = collect_inputs(args.inputs, reserved=(LEDGER_NAME, SUMMARY_NAME))
    if not items:
        raise InputError(f"no audio files in {', '.join(str(p) for p in args.inputs)}")
    out: Path = args.output_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output directory {out}: {exc.strerror or exc}") from exc
    bundle_hash = sha256_of(bundle.directory / MANIFEST_NAME)
    ledger = Ledger(out, bundle_hash, settings_hash(settings))
    finished = {item: ledger.finished(item.path) for item in items}
    jobs = [Job(item, expected_seconds(item)) for item, entry in finished.items() if entry is None]
    report = BatchReport(len(items), sum(job.expected_s for job in jobs))
    for item, entry in finished.items():
        if entry is not None:
            report.skipped(item.name, entry.audio_s)

    def on_result(job: Job, result) -> None:
        if not isinstance(result, Transcribed):
            report.failed(job.item.name, result.reason, job.expected_s, job.attempts, job.worker_deaths,
                          result.crash)
            return
        stem = job.item.output_stem
        with _ctrl_c_deferred():  # a file's transcripts, ledger line and count go in together
            paths = write_transcript(result.segments, result.duration, args.language, args.format,
                                     out / stem.parent, stem.name, result.finish_reasons)
            outputs = [p.relative_to(out).as_posix() for p in paths]
            fingerprint = job.fingerprint
            ledger.record(LedgerEntry(str(job.item.path), fingerprint.size, fingerprint.mtime_ns,
                                      fingerprint.sha256, bundle_hash, ledger.settings, outputs,
                                      round(result.duration, 3)))
            report.done(job.item.name, result.duration, job.expected_s, job.attempts, job.worker_deaths, outputs)

    workers: list = []
    interrupted = False
    try:
        if jobs:  # all done already: no cluster needed
            with ray_session(None if args.ray == "auto" else args.ray):
                threads = args.threads or DEFAULT_THREADS_PER_WORKER
                workers = start_workers(args.workers, threads, partial(load_model, _worker_model_args(args, threads)),
                                        transcription_options(args))
                run_jobs(workers, jobs, on_result, report.tick)
    except KeyboardInterrupt:
        interrupted = True
    report.write(out, interrupted, len(workers), settings)
    if interrupted:
        return exit_codes.INTERRUPTED
    if report.crashed:
        return exit_codes.FAILURE
    return exit_codes.BAD_INPUT if report.counts["failed"] else exit_codes.OK


@contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """Hold SIGINT back for the block; one that came meanwhile is raised right after it.
    A Python handler that only notes it, not a signal mask: the kernel hands a process's SIGINT
    to any thread that does not mask it (Ray's own threads), and Python raises it in the main
    thread whichever thread caught it."""
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _worker_model_args(args: argparse.Namespace, threads: int) -> argparse.Namespace:
    """What load_model needs, for a worker that may run on another machine: an embedded bundle
    goes by its name, which resolves inside that machine's installation."""
    embedded = {path: name for name, path in EMBEDDED_BUNDLES.items()}
    return argparse.Namespace(bundle=embedded.get(args.bundle, args.bundle), device=args.device, threads=threads,
                              n_ctx=args.n_ctx, n_batch=args.n_batch, verify=False, parallel=args.parallel,
                              loop_guard=args.loop_guard)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("batch", help="transcribe an archive on a Ray cluster, resumably (needs the batch extra)")
    add_model_options(parser, windows=True)
    parser.add_argument("inputs", type=Path, nargs="+", metavar="INPUT",
                        help="audio files, directories (walked for audio files) or .txt/.list files of paths")
    parser.add_argument("--output-dir", type=Path, required=True, help="transcripts, the ledger and the summary")
    parser.add_argument("--format", type=format_list, default=["json"],
                        help=f"files to write: comma-separated {','.join(FORMATS)}, or all (default: json)")
    add_transcription_options(parser)
    parser.add_argument("--ray", default="auto", metavar="auto|ADDRESS",
                        help="auto: start a local Ray instance (default); ADDRESS: join that cluster (HOST:PORT)")
    parser.add_argument("--workers", type=int, default=None,
                        help="workers, each holding the model (default: as many as the cluster's CPUs hold)")
    parser.add_argument("--threads-per-worker", dest="threads", type=int, default=None,
                        help="CPU threads (and Ray CPUs) per worker, as --threads "
                        f"(default {DEFAULT_THREADS_PER_WORKER})")
    parser.set_defaults(handler=_batch, extra="batch")
