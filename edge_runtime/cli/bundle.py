"""`info`, `export` and `quantize`: bundles themselves. `export` and `quantize` need their
extras, so they are imported only when asked for: the runtime never imports them otherwise."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..bundle import BUNDLE_HELP, bundle_path
from . import exit_codes


def _log(line: str) -> None:
    print(line, file=sys.stderr)


def _info(args: argparse.Namespace) -> int:
    from ..bundle import load_bundle

    print(load_bundle(args.bundle, verify_hashes=args.verify).manifest.to_json())
    return exit_codes.OK


def _export(args: argparse.Namespace) -> int:
    from moss_audio_edge.export.bundle_export import export_bundle  # the `export` extra
    from moss_audio_edge.export.hub import resolve_checkpoint

    export_bundle(resolve_checkpoint(args.checkpoint), args.out, llm_type=args.llm_type, log=_log)
    return exit_codes.OK


def _quantize(args: argparse.Namespace) -> int:
    from moss_audio_edge.quantize.bundle_quant import format_report, quantize_bundle  # the `quantize` extra

    from ..bundle import load_bundle

    out = quantize_bundle(args.bundle, args.out, target=args.target, encoder=args.encoder, llm=args.llm,
                          int8_layout=args.int8_layout, device=args.runtime_device,
                          runtime_threads=args.runtime_threads, gpu_layers=args.gpu_layers, threads=args.threads,
                          log=_log, embedding_type=args.token_embedding_type)
    print(format_report(load_bundle(out).manifest))
    return exit_codes.OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    info = sub.add_parser("info", help="print a bundle's manifest")
    info.add_argument("bundle", type=bundle_path, help=BUNDLE_HELP)
    info.add_argument("--verify", action="store_true", help="check the bundle's file hashes")
    info.set_defaults(handler=_info)

    export = sub.add_parser("export", help="checkpoint directory -> bundle (needs the export extra)")
    export.add_argument("checkpoint", type=Path,
                        help="checkpoint directory, or a Hugging Face model id (downloaded when online)")
    export.add_argument("out", type=Path)
    export.add_argument("--llm-type", choices=["F32", "F16"], default="F16")
    export.set_defaults(handler=_export, extra="export")

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
    quantize.add_argument("--runtime-device", default=None,
                          help="the compute device the bundle is meant for, recorded in its manifest "
                               "(the --device its runtime defaults to)")
    quantize.add_argument("--runtime-threads", type=int, default=None, help="the runtime's default threads")
    quantize.add_argument("--gpu-layers", type=int, default=None, help="LLM layers the runtime offloads")
    quantize.add_argument("--threads", type=int, default=None,
                          help="threads for quantizing and measuring on this machine (default: every core)")
    quantize.set_defaults(handler=_quantize, extra="quantize")
