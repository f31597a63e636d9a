"""`serve`: the OpenAI-compatible HTTP server (the `server` extra, imported only here)."""
from __future__ import annotations

import argparse
import os
import sys

from . import exit_codes
from .model_options import add_model_options, load_model


def _serve(args: argparse.Namespace) -> int:
    from ..realtime import RealtimeLimits
    from ..server import ServerConfig, serve  # the `server` extra

    model = load_model(args)
    config = ServerConfig(model_id=args.model_id or args.bundle.resolve().name,
                          api_key=args.api_key or os.environ.get("MOSS_EDGE_API_KEY") or None,
                          max_queue=args.max_queue, max_body_bytes=int(args.max_body_mb * 2**20),
                          timeout_s=args.timeout, window_seconds=args.window_seconds,
                          realtime=RealtimeLimits(max_sessions=args.max_sessions))
    print(f"serving {config.model_id} on http://{args.host}:{args.port}/v1, its page on http://{args.host}:"
          f"{args.port}/ ({model.device.describe()})",
          file=sys.stderr)
    serve(model, config, host=args.host, port=args.port)
    return exit_codes.OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("serve", help="OpenAI-compatible HTTP server (needs the server extra)")
    add_model_options(parser, windows=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None, help="require this bearer key (default: $MOSS_EDGE_API_KEY)")
    parser.add_argument("--model-id", default=None, help="the name /v1/models reports (default: the bundle's)")
    parser.add_argument("--max-queue", type=int, default=4, help="requests that may wait; more get 429")
    parser.add_argument("--max-body-mb", type=float, default=25.0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request, queueing included")
    parser.add_argument("--window-seconds", type=float, default=30.0)
    parser.add_argument("--max-sessions", type=int, default=1,
                        help="Realtime WebSocket sessions open at once; more are refused (docs/realtime.md)")
    parser.set_defaults(handler=_serve, extra="server")
