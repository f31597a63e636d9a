"""`run`, `transcribe` and `ask`: one audio file (or several) in, text out.

`transcribe` prints each segment as it is ready and writes the chosen formats only once a
file is done, each atomically, so a failure leaves no partial output. With several files, a
bad one is reported and skipped, and the exit code says that one failed; `--parallel N`
decodes N windows together, across the files too (MossAudio.transcribe_many).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from ..formats import FORMATS, clock, write_transcript
from ..prompt import ANSWER_TOKENS
from ..timestamps import Segment
from . import exit_codes
from .model_options import add_model_options, load_model


def _run(args: argparse.Namespace) -> int:
    from ..audio import load_audio

    samples = load_audio(args.audio)  # bad audio is reported before the (slow) model load
    model = load_model(args)
    streamed = not args.json and sys.stdout.isatty()

    def show(text: str) -> None:  # incremental text for people; JSON mode prints once at the end
        sys.stdout.write(text)
        sys.stdout.flush()

    result = model.generate(samples, args.prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                            top_k=args.top_k, top_p=args.top_p, seed=args.seed, system=args.system,
                            on_text=show if streamed else None)
    if args.json:
        print(json.dumps({
            "text": result.text, "token_ids": result.token_ids, "prompt_tokens": result.prompt_tokens,
            "audio_tokens": result.audio_tokens, "audio_seconds": result.audio_seconds,
            "timings": result.timings,
        }, ensure_ascii=False))
    elif streamed:
        print()
    else:
        print(result.text)
    return exit_codes.OK


def format_list(value: str) -> list[str]:
    """`--format`'s type: comma-separated format names, or `all`."""
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


def _transcribe(args: argparse.Namespace) -> int:
    model = load_model(args)
    show_progress = args.progress if args.progress is not None else sys.stderr.isatty()
    progress = [_progress(audio.name, show_progress) for audio in args.audio]

    def show(index: int, segment: Segment) -> None:
        if not args.quiet:
            print(f"[{_stamp(segment.start)} --> {_stamp(segment.end)}]  {segment.text}", flush=True)

    def follow(index: int, done: int, total: int) -> None:
        if progress[index]:
            progress[index](done, total)

    status = exit_codes.OK
    for file in model.transcribe_many(args.audio, on_segment=show, on_window=follow, **transcription_options(args)):
        if file.error is not None:  # this file is unusable; the others may still be fine
            print(f"error: {file.error}", file=sys.stderr)
            status = exit_codes.BAD_INPUT
            continue
        if args.format:
            audio = args.audio[file.index]
            try:
                paths = write_transcript(file.segments, file.info.duration, args.language, args.format,
                                         args.output_dir, audio.stem, file.info.finish_reasons)
            except OSError as exc:
                print(f"error: cannot write the transcript of {audio}: {exc}", file=sys.stderr)
                return exit_codes.FAILURE
            print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return status


def _ask(args: argparse.Namespace) -> int:
    model = load_model(args)
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
    return exit_codes.OK


def add_transcription_options(parser: argparse.ArgumentParser) -> None:
    """What decides a transcript's text (shared with `batch`, whose outputs must equal these)."""
    parser.add_argument("--timestamps", choices=["none", "sentence", "word"], default="sentence")
    parser.add_argument("--language", default=None, help="the spoken language, e.g. en or zh (a hint)")
    parser.add_argument("--window-seconds", type=float, default=30.0, help="audio per prompt (default 30)")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="most tokens per window (default: scaled to the window and --timestamps)")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--vad", action="store_true",
                        help="transcribe only the speech a voice activity detector finds, skipping long silences "
                             "(times stay on the file's clock; needs the mic extra's webrtcvad)")


def transcription_options(args: argparse.Namespace) -> dict:
    """Those options as MossAudio.transcribe's keyword arguments."""
    return {"timestamps": args.timestamps, "language": args.language, "window_seconds": args.window_seconds,
            "max_tokens": args.max_tokens, "temperature": args.temperature, "vad_filter": args.vad}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run a bundle on one audio file with one prompt")
    add_model_options(run)
    run.add_argument("--audio", required=True, type=Path)
    run.add_argument("--prompt", default="Transcribe the audio.")
    run.add_argument("--system", default=None, help="system message (default: the bundle's)")
    run.add_argument("--max-tokens", type=int, default=ANSWER_TOKENS,
                     help=f"most tokens to generate (default {ANSWER_TOKENS})")
    run.add_argument("--temperature", type=float, default=0.0)
    run.add_argument("--top-k", type=int, default=50)
    run.add_argument("--top-p", type=float, default=1.0)
    run.add_argument("--seed", type=int, default=None)
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.set_defaults(handler=_run)

    transcribe = sub.add_parser("transcribe", help="transcribe audio files, with sentence or word timestamps")
    add_model_options(transcribe, windows=True)
    transcribe.add_argument("audio", type=Path, nargs="+")
    add_transcription_options(transcribe)
    transcribe.add_argument("--format", type=format_list, default=[],
                            help=f"files to write: comma-separated {','.join(FORMATS)}, or all (default: none)")
    transcribe.add_argument("--output-dir", type=Path, default=Path("."))
    transcribe.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                            help="report windows done on stderr (default: when stderr is a terminal)")
    transcribe.add_argument("--quiet", action="store_true", help="do not print segments")
    transcribe.set_defaults(handler=_transcribe)

    ask = sub.add_parser("ask", help="ask a question about an audio file (QA, captions, emotion, events)")
    add_model_options(ask)
    ask.add_argument("audio", type=Path)
    ask.add_argument("question")
    ask.add_argument("--thinking", choices=["auto", "on", "off"], default="auto",
                     help="off makes a Thinking model answer at once")
    ask.add_argument("--thinking-budget", type=int, default=None, help="reasoning tokens before the answer is forced")
    ask.add_argument("--show-thinking", action="store_true", help="print the reasoning to stderr")
    ask.add_argument("--max-tokens", type=int, default=ANSWER_TOKENS,
                     help=f"most tokens, reasoning included (default {ANSWER_TOKENS})")
    ask.add_argument("--temperature", type=float, default=0.0)
    ask.add_argument("--seed", type=int, default=None)
    ask.add_argument("--system", default=None)
    ask.add_argument("--json", action="store_true", help="print one JSON object")
    ask.set_defaults(handler=_ask)
