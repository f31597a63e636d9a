"""`listen`: live transcription from a microphone (`--mic`) or a file played as one."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterator

from ..features import SAMPLE_RATE
from . import exit_codes
from .model_options import add_model_options, load_model


def _blocks(args: argparse.Namespace) -> Iterator:
    from ..capture import file_blocks, microphone_blocks

    if args.input is not None:
        blocks = file_blocks(args.input, realtime=args.realtime)
    else:
        mic = int(args.mic) if args.mic is not None and args.mic.isdigit() else args.mic
        blocks = microphone_blocks(mic)
    received = 0.0
    for block in blocks:  # --max-seconds: stop after that much audio
        yield block
        received += len(block.samples) / SAMPLE_RATE
        if args.max_seconds is not None and received >= args.max_seconds:
            return


class _LiveView:
    """One line that shows the current partial text, replaced as it changes; finals stay."""

    def __init__(self) -> None:
        self.width = 0

    def show(self, event) -> None:
        stamp = f"[{event.start:7.2f} -> {event.end:7.2f}] " if event.start is not None else ""
        if event.type == "status":
            line = "(" + ", ".join(f"{k} {v}" for k, v in event.info.items()) + ")"
            print(f"\r{' ' * self.width}\r{line}", file=sys.stderr)
            self.width = 0
        elif event.type == "partial":
            line = f"{stamp}{event.text} ..."
            sys.stdout.write(f"\r{line:<{self.width}}")
            self.width = len(line)
        else:
            sys.stdout.write(f"\r{stamp + event.text:<{self.width}}\n")
            self.width = 0
        sys.stdout.flush()


def listen(args: argparse.Namespace) -> int:
    from ..stream import StreamEvent

    model = load_model(args)
    view = _LiveView()

    def emit(event: StreamEvent) -> None:
        if args.format == "jsonl":
            print(json.dumps(event.to_dict(), ensure_ascii=False), flush=True)
        else:
            view.show(event)

    session = model.stream_session(args.timestamps)
    source = str(args.input) if args.input else (args.mic or "default microphone")
    emit(StreamEvent("status", info={"state": "listening", "source": source}))
    try:
        for event in model.stream(_blocks(args), session=session):
            emit(event)
    except KeyboardInterrupt:  # Ctrl-C: stop cleanly, flushing what was heard
        emit(StreamEvent("status", info={"stopped": "interrupted"}))
        for event in session.finish():
            emit(event)
    return exit_codes.OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("listen", help="live transcription from a microphone or a file")
    add_model_options(parser)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--mic", default=None, metavar="NAME_OR_INDEX",
                        help="input device, by name or PortAudio index (default: the system's default)")
    source.add_argument("--input", type=Path, default=None, help="an audio file as the live source")
    parser.add_argument("--realtime", action="store_true", help="play --input at real-time pace")
    parser.add_argument("--timestamps", choices=["none", "sentence", "word"], default="sentence")
    parser.add_argument("--format", choices=["text", "jsonl"], default="text")
    parser.add_argument("--max-seconds", type=float, default=None)
    parser.set_defaults(handler=listen, extra="mic")
