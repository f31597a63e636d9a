"""`bench`: a short benchmark of one bundle on this machine (edge_runtime/measure.py measures)."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from . import exit_codes
from .model_options import add_model_options, load_model


def _bench(args: argparse.Namespace) -> int:
    from ..audio import load_audio
    from ..measure import format_bench, run_bench, speechlike_signal

    samples = load_audio(args.audio) if args.audio else speechlike_signal(args.seconds)
    model = load_model(args)
    result = run_bench(model, samples, threads=args.threads or os.cpu_count() or 1, runs=args.runs)
    print(json.dumps(result) if args.json else format_bench(result))
    return exit_codes.OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "bench", help="measure a bundle on this device: encoder, LLM, end to end",
        description="A short benchmark of one bundle on this machine: encoder ms per 4 s chunk; LLM "
                    "prefill and decode tokens/s; real-time factor and peak memory of a transcription "
                    "with sentence timestamps. Decode lengths are fixed (random-weight bundles never "
                    "stop). benchmarks/bench_4b.py is the full version, with llama.cpp's own loop and "
                    "the machine's limits to compare against.")
    add_model_options(parser)
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="length of the generated clip for the end-to-end run (default 30)")
    parser.add_argument("--audio", type=Path, default=None, help="transcribe this file instead of a generated clip")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement; medians are reported")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=_bench)
