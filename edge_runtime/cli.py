"""`moss-edge`: the command line.

Exit codes: 0 success, 1 unexpected failure, 2 usage error, 3 bad input (audio, bundle,
checkpoint), 4 missing optional dependency. `export` and `demo` need the `export` extra and
are loaded only when asked for, so the runtime itself never imports torch.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from . import __version__
from .audio import AudioError
from .bundle import BundleError

EXIT_FAILURE, EXIT_USAGE, EXIT_BAD_INPUT, EXIT_MISSING_EXTRA = 1, 2, 3, 4


def _cmd_run(args: argparse.Namespace) -> int:
    from .transcribe import MossAudio

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

    result = model.generate(args.audio, args.prompt, max_new_tokens=args.max_new_tokens,
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


def _cmd_info(args: argparse.Namespace) -> int:
    from .bundle import load_bundle

    bundle = load_bundle(args.bundle, verify_hashes=args.verify)
    print(bundle.manifest.to_json())
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from export.bundle_export import export_bundle  # needs the `export` extra

    export_bundle(args.checkpoint, args.out, llm_type=args.llm_type,
                  log=lambda line: print(line, file=sys.stderr))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from export.demo import run_demo  # needs the `export` extra

    return run_demo(cache_dir=args.cache_dir, threads=args.threads)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moss-edge", description="MOSS-Audio on the edge")
    parser.add_argument("--version", action="version", version=f"moss-audio-edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a bundle on one audio file with one prompt")
    run.add_argument("bundle", type=Path)
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

    info = sub.add_parser("info", help="print a bundle's manifest")
    info.add_argument("bundle", type=Path)
    info.add_argument("--verify", action="store_true")
    info.set_defaults(handler=_cmd_info)

    export = sub.add_parser("export", help="checkpoint directory -> bundle (needs the export extra)")
    export.add_argument("checkpoint", type=Path)
    export.add_argument("out", type=Path)
    export.add_argument("--llm-type", choices=["F32", "F16"], default="F16")
    export.set_defaults(handler=_cmd_export)

    demo = sub.add_parser("demo", help="build the embedded tiny model and run it on generated speech")
    demo.add_argument("--cache-dir", type=Path, default=None)
    demo.add_argument("--threads", type=int, default=None)
    demo.set_defaults(handler=_cmd_demo)
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
              "`pip install moss-audio-edge[export]`", file=sys.stderr)
        return EXIT_MISSING_EXTRA
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
