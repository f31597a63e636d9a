"""`wyoming`: speech to text for Home Assistant's voice pipeline (the `wyoming` extra, imported
only here; docs/wyoming.md)."""
from __future__ import annotations

import argparse
import asyncio
import sys

from . import exit_codes
from .model_options import add_model_options, load_model


def _serve(args: argparse.Namespace) -> int:
    from ..wyoming_server import WyomingConfig, serve  # the `wyoming` extra

    model = load_model(args)
    config = WyomingConfig(model_id=args.model_id or args.bundle.resolve().name,
                           languages=tuple(args.language or ["en"]), streaming=args.transcript_streaming)
    print(f"wyoming: {config.model_id} at {args.uri} ({model.device.describe()})", file=sys.stderr)
    asyncio.run(serve(model, config, args.uri))
    return exit_codes.OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("wyoming", help="Wyoming speech-to-text server for Home Assistant "
                                            "(needs the wyoming extra)")
    add_model_options(parser)
    parser.add_argument("--uri", default="tcp://0.0.0.0:10300",
                        help="where to listen: tcp://HOST:PORT, unix://PATH or stdio:// (default: %(default)s)")
    parser.add_argument("--language", action="append", metavar="CODE",
                        help="a language to advertise, e.g. en or zh; repeat for more (default: en)")
    parser.add_argument("--model-id", default=None, help="the model name reported (default: the bundle's)")
    parser.add_argument("--no-transcript-streaming", dest="transcript_streaming", action="store_false",
                        help="send only the final transcript, for clients older than transcript-chunk")
    parser.set_defaults(handler=_serve, extra="wyoming")
