"""`moss-edge`: the command line.

Exit codes: 0 success, 1 unexpected failure, 2 usage error, 3 bad input (audio, bundle,
checkpoint), 4 missing optional dependency. `export` and `demo` need the `export` extra,
`serve` the `server` extra; they are loaded only when asked for, so the runtime itself never
imports torch. `transcribe`, `ask`, `serve` and `bench` live in commands.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from . import __version__
from .audio import AudioError
from .bundle import BUNDLE_HELP, BundleError, bundle_path

EXIT_FAILURE, EXIT_USAGE, EXIT_BAD_INPUT, EXIT_MISSING_EXTRA = 1, 2, 3, 4


def _cmd_run(args: argparse.Namespace) -> int:
    from .audio import load_audio
    from .transcribe import MossAudio

    samples = load_audio(args.audio)  # bad audio is reported before the (slow) model load
    model = MossAudio(args.bundle, threads=args.threads, n_ctx=args.n_ctx, verify_hashes=args.verify)
    streamed = not args.json and sys.stdout.isatty()
    pending = bytearray()

    def show(token: int) -> None:  # incremental text for people; JSON mode prints once at the end
        pending.extend(model.llm.token_bytes(token))
        try:
            sys.stdout.write(pending.decode("utf-8"))
            sys.stdout.flush()
            pending.clear()
        except UnicodeDecodeError:
            pass  # a multi-byte character split across tokens: wait for the rest

    result = model.generate(samples, args.prompt, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            seed=args.seed, system=args.system, on_token=show if streamed else None)
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
    return 0


def _listen_source(args: argparse.Namespace):
    from .capture import file_blocks, microphone_blocks

    if args.input is not None:
        blocks = file_blocks(args.input, realtime=args.realtime)
    else:
        device = int(args.device) if args.device is not None and args.device.isdigit() else args.device
        blocks = microphone_blocks(device)
    received = 0.0
    for block in blocks:  # --max-seconds: stop after that much audio
        yield block
        received += len(block.samples) / 16000
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


def _cmd_listen(args: argparse.Namespace) -> int:
    from .stream import StreamConfig, StreamEvent, StreamingSession, stream_events
    from .transcribe import MossAudio

    model = MossAudio(args.bundle, threads=args.threads)
    view = _LiveView()

    def emit(event) -> None:
        if args.format == "jsonl":
            print(json.dumps(event.to_dict(), ensure_ascii=False), flush=True)
        else:
            view.show(event)

    config = StreamConfig(timestamps=args.timestamps)
    session = StreamingSession(model, config)
    emit(StreamEvent("status", info={"state": "listening",
                                     "source": str(args.input) if args.input else (args.device or "default")}))
    try:
        for event in stream_events(model, _listen_source(args), config, session):
            emit(event)
    except KeyboardInterrupt:  # Ctrl-C: stop cleanly, flushing what was heard
        emit(StreamEvent("status", info={"stopped": "interrupted"}))
        for event in session.finish():
            emit(event)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .bundle import load_bundle

    bundle = load_bundle(args.bundle, verify_hashes=args.verify)
    print(bundle.manifest.to_json())
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from export.bundle_export import export_bundle  # needs the `export` extra
    from export.hub import resolve_checkpoint

    export_bundle(resolve_checkpoint(args.checkpoint), args.out, llm_type=args.llm_type,
                  log=lambda line: print(line, file=sys.stderr))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from export.demo import run_demo  # needs the `export` extra

    status = run_demo(cache_dir=args.cache_dir, threads=args.threads)
    if status or args.mic is None:
        return status
    from .capture import default_microphone

    name = default_microphone()
    if name is None:
        print("4. no microphone found (PortAudio lists no input device); skipping the live part")
        return 0
    print(f"4. live from {name!r} for {args.mic:.0f} s (Ctrl-C stops); say a command or some digits")
    live = argparse.Namespace(bundle=bundle_path("nano"), device=None, input=None, realtime=False,
                              timestamps="sentence", format="text", max_seconds=args.mic, threads=args.threads)
    return _cmd_listen(live)


def _cmd_quantize(args: argparse.Namespace) -> int:
    try:
        from quantize.bundle_quant import format_report, quantize_bundle  # the `quantize` extra
    except ModuleNotFoundError as exc:
        print(f"error: {exc.name} is not installed; `moss-edge quantize` needs "
              "`pip install moss-audio-edge[quantize]`", file=sys.stderr)
        return EXIT_MISSING_EXTRA
    from .bundle import load_bundle

    out = quantize_bundle(args.bundle, args.out, target=args.target, encoder=args.encoder, llm=args.llm,
                          int8_layout=args.int8_layout, device=args.device,
                          runtime_threads=args.runtime_threads, gpu_layers=args.gpu_layers, threads=args.threads,
                          log=lambda line: print(line, file=sys.stderr), embedding_type=args.token_embedding_type)
    print(format_report(load_bundle(out).manifest))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moss-edge", description="MOSS-Audio on the edge")
    parser.add_argument("--version", action="version", version=f"moss-audio-edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a bundle on one audio file with one prompt")
    run.add_argument("bundle", type=bundle_path, help=BUNDLE_HELP)
    run.add_argument("--audio", required=True, type=Path)
    run.add_argument("--prompt", default="Transcribe the audio.")
    run.add_argument("--system", default=None, help="system message (default: the bundle's)")
    run.add_argument("--max-new-tokens", type=int, default=256)
    run.add_argument("--temperature", type=float, default=0.0)
    run.add_argument("--top-k", type=int, default=50)
    run.add_argument("--top-p", type=float, default=1.0)
    run.add_argument("--seed", type=int, default=None)
    run.add_argument("--threads", type=int, default=None)
    run.add_argument("--n-ctx", type=int, default=8192)
    run.add_argument("--verify", action="store_true", help="check file hashes before loading")
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.set_defaults(handler=_cmd_run)

    listen = sub.add_parser("listen", help="live transcription from a microphone or a file")
    listen.add_argument("bundle", type=bundle_path, help=BUNDLE_HELP)
    source = listen.add_mutually_exclusive_group()
    source.add_argument("--device", default=None, help="input device name or index (default: system default)")
    source.add_argument("--input", type=Path, default=None, help="an audio file as the live source")
    listen.add_argument("--realtime", action="store_true", help="play --input at real-time pace")
    listen.add_argument("--timestamps", choices=["none", "sentence", "word"], default="sentence")
    listen.add_argument("--format", choices=["text", "jsonl"], default="text")
    listen.add_argument("--max-seconds", type=float, default=None)
    listen.add_argument("--threads", type=int, default=None)
    listen.set_defaults(handler=_cmd_listen, extra="mic")

    info = sub.add_parser("info", help="print a bundle's manifest")
    info.add_argument("bundle", type=bundle_path, help=BUNDLE_HELP)
    info.add_argument("--verify", action="store_true")
    info.set_defaults(handler=_cmd_info)

    export = sub.add_parser("export", help="checkpoint directory -> bundle (needs the export extra)")
    export.add_argument("checkpoint", type=Path,
                        help="checkpoint directory, or a Hugging Face model id (downloaded when online)")
    export.add_argument("out", type=Path)
    export.add_argument("--llm-type", choices=["F32", "F16"], default="F16")
    export.set_defaults(handler=_cmd_export)

    demo = sub.add_parser("demo", help="the embedded nano model on generated speech: a timestamped transcript")
    demo.add_argument("--cache-dir", type=Path, default=None)
    demo.add_argument("--threads", type=int, default=None)
    demo.add_argument("--mic", type=float, nargs="?", const=30.0, default=None, metavar="SECONDS",
                      help="then listen to the default microphone, when there is one (default 30 s)")
    demo.set_defaults(handler=_cmd_demo)

    # choices spelled out: the runtime must not import quantize (tests hold them equal)
    quantize = sub.add_parser(
        "quantize", help="bundle -> quantized bundle with a fidelity report (needs the quantize extra)",
        description="Quantize a float bundle for a device. A --target preset (listed in the README, "
                    "defined in quantize/presets.py) picks the types, the runtime device and thread "
                    "defaults; every other option overrides it. The output manifest records what was "
                    "done and the measured fidelity, which is also printed.")
    quantize.add_argument("bundle", type=bundle_path, help=BUNDLE_HELP)
    quantize.add_argument("out", type=Path, help="new directory for the quantized bundle")
    quantize.add_argument("--target", choices=["pi5", "jetson", "apple", "x86"], default=None,
                          help="device preset (default: int8 + Q4_K_M for a machine like this one)")
    quantize.add_argument("--encoder", choices=["fp32", "fp16", "int8", "int4"], default=None,
                          help="encoder weights (default: the preset's)")
    quantize.add_argument("--llm", choices=["F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0"], default=None,
                          help="GGUF type, as llama.cpp's quantize presets (default: the preset's)")
    quantize.add_argument("--token-embedding-type", choices=["F16", "Q8_0", "Q5_1", "Q5_0", "Q4_0"], default=None,
                          help="type of the token embedding (default: llama.cpp's choice for --llm)")
    quantize.add_argument("--int8-layout", choices=["arm64", "vnni", "avx2"], default=None,
                          help="int8 weight layout for the CPU that runs it (avx2: 7-bit weights)")
    quantize.add_argument("--device", default=None,
                          help="the runtime device the bundle is meant for (as `device=` of MossAudio)")
    quantize.add_argument("--runtime-threads", type=int, default=None, help="the runtime's default threads")
    quantize.add_argument("--gpu-layers", type=int, default=None, help="LLM layers the runtime offloads")
    quantize.add_argument("--threads", type=int, default=None,
                          help="threads for quantizing and measuring on this machine (default: every core)")
    quantize.set_defaults(handler=_cmd_quantize)

    from .commands import add_commands  # transcribe, ask, serve, bench
    add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (AudioError, BundleError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ModuleNotFoundError as exc:
        print(f"error: {exc.name} is not installed; `moss-edge {args.command}` needs "
              f"`pip install moss-audio-edge[{getattr(args, 'extra', 'export')}]`", file=sys.stderr)
        return EXIT_MISSING_EXTRA
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
