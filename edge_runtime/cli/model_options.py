"""The options every command that loads a bundle shares, and loading it from them."""
from __future__ import annotations

import argparse

from ..bundle import BUNDLE_HELP, bundle_path


def add_model_options(parser: argparse.ArgumentParser, windows: bool = False) -> None:
    """`windows`: the command transcribes windows of audio, which `--parallel` decodes together."""
    parser.add_argument("bundle", type=bundle_path, help=BUNDLE_HELP)
    # not argparse choices: device.py loads onnxruntime and llama.cpp, which building the parser must not
    parser.add_argument("--device", default="auto",
                        help="compute device: auto, cpu, cuda, tensorrt or metal (default: auto)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--n-ctx", type=int, default=None,
                        help="LLM context in tokens (default: sized to each call's prompt and output budget)")
    parser.add_argument("--batch-size", dest="n_batch", type=int, default=None, metavar="N",
                        help="LLM prompt positions per llama.cpp batch (default 256; docs/format.md#batch-size)")
    parser.add_argument("--verify", action="store_true", help="check the bundle's file hashes before loading")
    parser.add_argument("--no-loop-guard", dest="loop_guard", action="store_false",
                        help="decode to the token budget even when the output repeats itself")
    if windows:
        parser.add_argument("--parallel", type=int, default=1, metavar="N",
                            help="decode up to N windows together, of one file or across the files (same output; default 1)")


def load_model(args: argparse.Namespace):
    from ..loop_guard import LoopGuardConfig
    from ..transcribe import MossAudio  # loads onnxruntime and llama.cpp: only once a command runs

    return MossAudio(args.bundle, device=args.device, threads=args.threads, n_ctx=args.n_ctx,
                     n_batch=args.n_batch, verify_hashes=args.verify, parallel=getattr(args, "parallel", 1),
                     loop_guard=LoopGuardConfig() if args.loop_guard else None)
