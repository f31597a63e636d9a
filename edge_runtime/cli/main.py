"""The `moss-edge` parser, and the one place where failures become exit codes.

An InputError (bad audio, bundle, checkpoint, device or output directory) is one `error:`
line and exit 3; a missing optional dependency names its extra (exit 4); Ctrl-C is 130.
Anything else is a bug: its traceback goes to the `moss_edge` log (stderr) and the exit code
is 1. Each command's module imports what it needs only when it runs, so `--version` and
`--help` load neither onnxruntime nor llama.cpp, and the runtime never imports the export or
quantize packages unless those commands run.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from .. import __version__
from ..errors import InputError
from . import batch, bench, bundle, demo, exit_codes, live, serve, transcribe, wyoming

log = logging.getLogger("moss_edge")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moss-edge", description="MOSS-Audio on the edge")
    parser.add_argument("--version", action="version", version=f"moss-audio-edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for commands in (transcribe, batch, live, bundle, demo, serve, wyoming, bench):
        commands.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    extra = getattr(args, "extra", None)  # the optional dependencies this command may lack
    # a module missing from a command without an extra is a broken install: reported as a bug
    missing_extra = ModuleNotFoundError if extra else ()
    try:
        return args.handler(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    except missing_extra as exc:
        print(f"error: {exc.name} is not installed; `moss-edge {args.command}` needs "
              f"`pip install moss-audio-edge[{extra}]`", file=sys.stderr)
        return exit_codes.MISSING_EXTRA
    except KeyboardInterrupt:
        return exit_codes.INTERRUPTED
    except Exception:
        log.exception("moss-edge %s failed unexpectedly (a bug: please report it with this traceback)",
                      args.command)
        return exit_codes.FAILURE
