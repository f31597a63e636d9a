"""The `transcribe`, `ask`, `serve` and `bench` subcommands (cli.py registers them; exit codes as there).

`transcribe` prints each segment as it is ready and writes the chosen formats only once a
file is done, each atomically, so a failure leaves no partial output. With several files, a
bad one is reported and skipped, and the exit code says that one failed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

from .audio import AudioError
from .bundle import BUNDLE_HELP, bundle_path
from .formats import FORMATS, clock, write_transcript

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 3


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=bundle_path, help=BUNDLE_HELP)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, tensorrt or metal (default: auto)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--n-ctx", type=int, default=8192, help="LLM context in tokens")


def _load_model(args: argparse.Namespace):
    from .transcribe import MossAudio

    return MossAudio(args.bundle, device=args.device, threads=args.threads, n_ctx=args.n_ctx)


def _formats(value: str) -> list[str]:
    names = list(FORMATS) if value == "all" else [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown format {', '.join(unknown)} (choose from "
                                         f"{', '.join(FORMATS)} or all)")
    return names


def _stamp(t: float | None) -> str:
    return "   untimed   " if t is None else clock(t, ".")


def _progress(name: str, enabled: bool) -> Callable[[int, int], None] | None:
    if not enabled:
        return None
    live = sys.stderr.isatty()

    def show(done: int, total: int) -> None:
        end = "\r" if live and done < total else "\n"
        print(f"{name}: window {done}/{total} ({100 * done // total}%)", end=end, file=sys.stderr, flush=True)
    return show


def _cmd_transcribe(args: argparse.Namespace) -> int:
    model = _load_model(args)
    status = EXIT_OK
    for audio in args.audio:
        try:
            segments, info = model.transcribe(
                audio, timestamps=args.timestamps, language=args.language, window_seconds=args.window_seconds,
                max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                on_window=_progress(audio.name, args.progress if args.progress is not None else sys.stderr.isatty()))
        except AudioError as exc:  # this file is unusable; the others may still be fine
            print(f"error: {exc}", file=sys.stderr)
            status = EXIT_BAD_INPUT
            continue
        done = []
        for segment in segments:
            done.append(segment)
            if not args.quiet:
                print(f"[{_stamp(segment.start)} --> {_stamp(segment.end)}]  {segment.text}", flush=True)
        if args.format:
            try:
                paths = write_transcript(done, info.duration, args.language, args.format, args.output_dir, audio.stem)
            except OSError as exc:
                print(f"error: cannot write the transcript of {audio}: {exc}", file=sys.stderr)
                return EXIT_FAILURE
            print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return status


def _cmd_ask(args: argparse.Namespace) -> int:
    model = _load_model(args)
    thinking = {"auto": None, "on": True, "off": False}[args.thinking]
    stream = model.ask_stream(args.audio, args.question, thinking=thinking, thinking_budget=args.thinking_budget,
                              max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
                              system=args.system)
    live = not args.json and sys.stdout.isatty()
    for delta in stream:
        if delta.kind == "thinking" and args.show_thinking and not args.json:
            print(delta.text, end="", file=sys.stderr, flush=True)
        elif delta.kind == "answer" and live:
            print(delta.text, end="", flush=True)
    answer = stream.answer
    if args.json:
        print(json.dumps({"answer": answer.text, "thinking": answer.thinking,
                          "finish_reason": answer.finish_reason, "prompt_tokens": answer.prompt_tokens,
                          "completion_tokens": len(answer.token_ids), "audio_seconds": answer.audio_seconds,
                          "timings": answer.timings}, ensure_ascii=False))
    else:
        if answer.thinking and args.show_thinking:
            print(file=sys.stderr)
        print("" if live else answer.text)
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from .server import ServerConfig, serve  # needs the `server` extra

    model = _load_model(args)
    config = ServerConfig(model_id=args.model_id or args.bundle.resolve().name,
                          api_key=args.api_key or os.environ.get("MOSS_EDGE_API_KEY") or None,
                          max_queue=args.max_queue, max_body_bytes=int(args.max_body_mb * 2**20),
                          timeout_s=args.timeout, window_seconds=args.window_seconds)
    print(f"serving {config.model_id} on http://{args.host}:{args.port}/v1 ({model.device.describe()})",
          file=sys.stderr)
    serve(model, config, host=args.host, port=args.port)
    return EXIT_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    from .audio import load_audio
    from .bench import format_bench, run_bench, speechlike_signal

    samples = load_audio(args.audio) if args.audio else speechlike_signal(args.seconds)
    model = _load_model(args)
    result = run_bench(model, samples, threads=args.threads or os.cpu_count() or 1, runs=args.runs)
    print(json.dumps(result) if args.json else format_bench(result))
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction) -> None:
    transcribe = sub.add_parser("transcribe", help="transcribe audio files, with sentence or word timestamps")
    _model_options(transcribe)
    transcribe.add_argument("audio", type=Path, nargs="+")
    transcribe.add_argument("--timestamps", choices=["none", "sentence", "word"], default="sentence")
    transcribe.add_argument("--language", default=None, help="the spoken language, e.g. en or zh (a hint)")
    transcribe.add_argument("--format", type=_formats, default=[],
                            help=f"files to write: comma-separated {','.join(FORMATS)}, or all (default: none)")
    transcribe.add_argument("--output-dir", type=Path, default=Path("."))
    transcribe.add_argument("--window-seconds", type=float, default=30.0, help="audio per prompt (default 30)")
    transcribe.add_argument("--max-new-tokens", type=int, default=None, help="per window")
    transcribe.add_argument("--temperature", type=float, default=0.0)
    transcribe.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                            help="report windows done on stderr (default: when stderr is a terminal)")
    transcribe.add_argument("--quiet", action="store_true", help="do not print segments")
    transcribe.set_defaults(handler=_cmd_transcribe)

    ask = sub.add_parser("ask", help="ask a question about an audio file (QA, captions, emotion, events)")
    _model_options(ask)
    ask.add_argument("audio", type=Path)
    ask.add_argument("question")
    ask.add_argument("--thinking", choices=["auto", "on", "off"], default="auto",
                     help="off makes a Thinking model answer at once")
    ask.add_argument("--thinking-budget", type=int, default=None, help="reasoning tokens before the answer is forced")
    ask.add_argument("--show-thinking", action="store_true", help="print the reasoning to stderr")
    ask.add_argument("--max-tokens", type=int, default=512)
    ask.add_argument("--temperature", type=float, default=0.0)
    ask.add_argument("--seed", type=int, default=None)
    ask.add_argument("--system", default=None)
    ask.add_argument("--json", action="store_true", help="print one JSON object")
    ask.set_defaults(handler=_cmd_ask)

    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP server (needs the server extra)")
    _model_options(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", default=None, help="require this bearer key (default: $MOSS_EDGE_API_KEY)")
    serve.add_argument("--model-id", default=None, help="the name /v1/models reports (default: the bundle's)")
    serve.add_argument("--max-queue", type=int, default=4, help="requests that may wait; more get 429")
    serve.add_argument("--max-body-mb", type=float, default=25.0)
    serve.add_argument("--timeout", type=float, default=600.0, help="seconds per request, queueing included")
    serve.add_argument("--window-seconds", type=float, default=30.0)
    serve.set_defaults(handler=_cmd_serve, extra="server")

    bench = sub.add_parser(
        "bench", help="measure a bundle on this device: encoder, LLM, overhead, limits, end to end",
        description="A short benchmark of one bundle on this machine: encoder ms per 4 s chunk; LLM "
                    "prefill and decode tokens/s through this runtime and through llama.cpp's own loop "
                    "(their ratio is the runtime's overhead); the limits that the measured memory "
                    "bandwidth and matrix throughput set; real-time factor and peak memory of a "
                    "transcription with sentence timestamps. Decode lengths are fixed (random-weight "
                    "bundles never stop). benchmarks/bench_4b.py is the full version.")
    _model_options(bench)
    bench.add_argument("--seconds", type=float, default=30.0,
                       help="length of the generated clip for the end-to-end run (default 30)")
    bench.add_argument("--audio", type=Path, default=None, help="transcribe this file instead of a generated clip")
    bench.add_argument("--runs", type=int, default=3, help="runs per measurement; medians are reported")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(handler=_cmd_bench)
