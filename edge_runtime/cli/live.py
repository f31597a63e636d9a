"""`listen`: live transcription from a microphone (`--mic`) or a file played as one.

A live source (a microphone, a paced file) is captured on its own thread, so nothing is
lost when transcription falls behind (docs/streaming.md#falling-behind). Ctrl-C once stops
capturing and still transcribes what was captured; a second Ctrl-C abandons that and says
how much was left, and where it was recorded (docs/streaming.md#stopping).
"""
from __future__ import annotations

import argparse
import json
import queue
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator

from ..features import SAMPLE_RATE
from . import exit_codes
from .model_options import add_model_options, load_model


def _blocks(args: argparse.Namespace, stop: threading.Event) -> Iterator:
    """The source's blocks, up to --max-seconds or until `stop` is set."""
    from ..capture import device_blocks, file_blocks

    if args.input is not None:
        blocks = file_blocks(args.input, realtime=args.pace is not None, speed=args.pace or 1.0)
    else:
        blocks = device_blocks(int(args.mic) if args.mic is not None and args.mic.isdigit() else args.mic)
    received = 0.0
    try:
        for block in blocks:
            yield block
            received += len(block.samples) / SAMPLE_RATE
            if stop.is_set() or (args.max_seconds is not None and received >= args.max_seconds):
                return
    finally:
        blocks.close()  # in the thread that iterates it: releases the device


class _Interrupts:
    """SIGINT while listening: the first sets `stop` (the capture ends, the rest is still
    transcribed), the second raises KeyboardInterrupt."""

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt
        self.stop.set()

    def restore(self) -> None:
        signal.signal(signal.SIGINT, self.previous)


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


class _Questions:
    """Questions typed on stdin, one a line, read on their own thread. Between two blocks each
    is answered from the audio just heard (StreamingSession.ask_stream: its rows are in the KV
    cache), or waits until there is some (docs/realtime.md#questions)."""

    def __init__(self) -> None:
        self.typed: queue.Queue[str] = queue.Queue()
        self.waiting: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            if line.strip():
                self.typed.put(line.strip())

    def answer(self, session, json_lines: bool, last: bool = False) -> None:
        """Answer what can be answered now; `last`: the stream is over, report what cannot."""
        from ..errors import InputError

        while not self.typed.empty():
            self.waiting.append(self.typed.get())
        while self.waiting:
            question = self.waiting[0]
            try:
                answer = session.ask_stream(question)
                list(answer)
            except InputError as exc:
                if not last:
                    return  # nothing heard yet: asked again after the next block
                answer, error = None, str(exc)
            self.waiting.pop(0)
            if json_lines:
                reply = {"text": answer.answer.text} if answer else {"error": error}
                print(json.dumps({"type": "answer", "question": question, **reply}, ensure_ascii=False), flush=True)
            else:
                print(f"\nQ: {question}\nA: {answer.answer.text if answer else 'error: ' + error}", flush=True)


def listen(args: argparse.Namespace) -> int:
    from ..capture import LiveCapture
    from ..stream import StreamEvent

    live = args.input is None or args.pace is not None
    if args.record is not None and not live:
        print("error: --record needs a live source: --mic, or --input with --realtime or --pace",
              file=sys.stderr)
        return exit_codes.USAGE
    model = load_model(args)
    view = _LiveView()

    def emit(event: StreamEvent) -> None:
        if args.format == "jsonl":
            print(json.dumps(event.to_dict(), ensure_ascii=False), flush=True)
        else:
            view.show(event)

    stop = threading.Event()
    blocks = _blocks(args, stop)
    capture = LiveCapture(blocks, record=args.record) if live else None
    session = model.stream_session(args.timestamps)
    questions = _Questions()
    announced = False

    def announce_stop() -> None:  # once, from the consumer: the signal handler must not print
        nonlocal announced
        if stop.is_set() and not announced:
            announced = True
            info = {"state": "stopping", "reason": "interrupted", "heard_s": round(session.clock / SAMPLE_RATE, 2)}
            if capture is not None:
                info |= {"captured_s": round(capture.captured_s, 2), "backlog_s": round(capture.backlog_s, 2)}
            emit(StreamEvent("status", info=info))

    def watched(source: Iterator) -> Iterator:
        for block in source:
            announce_stop()
            questions.answer(session, args.format == "jsonl")
            yield block

    source = str(args.input) if args.input else (args.mic or "default microphone")
    listening = {"state": "listening", "source": source}
    emit(StreamEvent("status", info=listening | ({"record": str(args.record)} if args.record else {})))
    interrupts = _Interrupts(stop)
    try:
        for event in model.stream(watched(capture or blocks), session=session):
            emit(event)
        announce_stop()
        questions.answer(session, args.format == "jsonl", last=True)
    except KeyboardInterrupt:  # the second Ctrl-C: abandon what is left
        window = session.window  # its audio is heard but not final yet
        open_s = (session.clock - window.start) / SAMPLE_RATE if window else 0.0
        left = open_s + (capture.backlog_s if capture else 0.0)
        kept = (f"; everything captured is recorded in {args.record}" if args.record
                else " (listen --record FILE.wav keeps the audio)")
        print(f"\nabandoned: {left:.1f} s of captured audio were not transcribed{kept}", file=sys.stderr)
        return exit_codes.INTERRUPTED
    finally:
        interrupts.restore()
        if capture is not None:
            capture.close()
    emit(StreamEvent("status", info={"state": "done", "audio_s": round(session.clock / SAMPLE_RATE, 2)}))
    return exit_codes.OK


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def add_parsers(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("listen", help="live transcription from a microphone or a file; questions typed on "
                            "stdin are answered from what was just heard")
    add_model_options(parser)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--mic", default=None, metavar="NAME_OR_INDEX",
                        help="input device, by name or PortAudio index (default: the system's default)")
    source.add_argument("--input", type=Path, default=None, help="an audio file as the source")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--realtime", dest="pace", action="store_const", const=1.0,
                      help="play --input at real-time pace, as a live source")
    pace.add_argument("--pace", type=_positive, default=None, metavar="FACTOR",
                      help="play --input at FACTOR times real time, as a live source")
    parser.add_argument("--record", type=Path, default=None, metavar="FILE.wav",
                        help="write everything captured to this WAV file (readable even after a crash)")
    parser.add_argument("--timestamps", choices=["none", "sentence", "word"], default="sentence")
    parser.add_argument("--format", choices=["text", "jsonl"], default="text")
    parser.add_argument("--max-seconds", type=float, default=None)
    parser.set_defaults(handler=listen, extra="mic")
