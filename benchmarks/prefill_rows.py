"""Prefill speed through the runtime's engine: audio rows (embedding batches, (1+K)*hidden
floats a row, DeepStack included) against text tokens (token batches), the same number of
positions from position 0; and a window's whole sentence-timestamp prompt (chat frame, audio
rows cut by time markers every 25 rows, instruction) fed piece by piece, each run of tokens a
batch of its own as the runtime fed it before, against packed (docs/format.md#packed-prefill),
in the runtime's batches (llm.N_BATCH) and in llama.cpp's default batches of up to 512.
Interleaved, medians of `--runs`; the rows are random (the cost does not depend on the values).

    python benchmarks/prefill_rows.py --bundle /work/bench/q4b/int4-Q4_K_M --positions 256 --runs 3
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import llama_cpp
import numpy as np
from results_file import RESULTS, provenance, stamp, write_results  # benchmarks/ is the script's directory

from edge_runtime.bundle import load_bundle
from edge_runtime.engine import Engine
from edge_runtime.llm import N_BATCH, LlamaModel, even_batches
from edge_runtime.prompt import SENTENCE_TIMESTAMPS, Audio, Tokens, build_prompt, prompt_length

LLAMA_CPP_BATCH = 512  # llama.cpp's own default batch, against the runtime's llm.N_BATCH


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--positions", type=int, default=256)
    parser.add_argument("--window-seconds", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", default="prefill_rows")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    window_rows = math.ceil(args.window_seconds * bundle.manifest.audio.tokens_per_second)

    engine, engine_512 = (Engine(bundle, ["CPUExecutionProvider"], gpu_layers=0, threads=args.threads,
                                 n_ctx=max(args.positions, window_rows) + 512, n_batch=n_batch)  # + the prompt's text
                          for n_batch in (N_BATCH, LLAMA_CPP_BATCH))
    rng = np.random.default_rng(0)
    tokens = rng.integers(1000, engine.n_vocab - 1000, args.positions).tolist()
    width = bundle.manifest.model.row_width
    rows = (rng.standard_normal((max(args.positions, window_rows), width)) * 0.02).astype(np.float32)
    window = build_prompt(bundle.manifest, engine.tokenize, window_rows, SENTENCE_TIMESTAMPS)
    token_rows = LlamaModel.token_rows
    withheld = lambda self, ids: None  # the runtime then feeds each token run as a batch of its own

    def fed(pieces: list, packed: bool, on: Engine = engine) -> Callable[[], None]:
        def run() -> None:
            LlamaModel.token_rows = token_rows if packed else withheld
            on.start(pieces, rows)
        return run

    packed_512 = f"window prompt, packed, batches of up to {LLAMA_CPP_BATCH}"
    feeds = {"tokens": fed([Tokens(tuple(tokens))], True),
             "audio rows": fed([Audio(0, args.positions)], True),
             "window prompt, piece by piece": fed(window, False),
             "window prompt, packed": fed(window, True),
             packed_512: fed(window, True, engine_512)}
    for on in (engine, engine_512):  # first-call set-up kept out of the timings
        fed([Tokens(tuple(tokens[:16]))], True, on)()
    seconds: dict[str, list[float]] = {kind: [] for kind in feeds}
    for _ in range(args.runs):
        for kind, feed in feeds.items():
            started = time.perf_counter()
            feed()
            seconds[kind].append(time.perf_counter() - started)
    LlamaModel.token_rows = token_rows
    window_positions = prompt_length(window)
    counts = {"tokens": args.positions, "audio rows": args.positions, "window prompt, piece by piece": window_positions,
              "window prompt, packed": window_positions, packed_512: window_positions}
    batches = {kind: len(even_batches(n, N_BATCH)) for kind, n in counts.items()}
    batches["window prompt, piece by piece"] = len(window)
    batches[packed_512] = len(even_batches(window_positions, LLAMA_CPP_BATCH))
    medians = {kind: statistics.median(s) for kind, s in seconds.items()}
    rates = {kind: round(counts[kind] / medians[kind], 2) for kind in feeds}
    result = {**stamp("python benchmarks/prefill_rows.py " + " ".join(sys.argv[1:])),
              "bundle": str(args.bundle), "threads": args.threads, "positions": args.positions,
              "window_rows": window_rows, "window_positions": window_positions, "runs": args.runs,
              "row_floats": width, "llama_cpp_system": llama_cpp.llama_print_system_info().decode().strip(),
              "seconds": {kind: round(m, 2) for kind, m in medians.items()}, "positions_per_s": rates,
              "rows_over_tokens": round(rates["audio rows"] / rates["tokens"], 3),
              "packed_speedup": round(medians["window prompt, piece by piece"] / medians["window prompt, packed"], 2),
              "batch_512_over_runtime": round(medians[packed_512] / medians["window prompt, packed"], 3)}
    lines = ["# Prefill: audio rows against text tokens, and a window's prompt piece by piece against packed", "",
             provenance(result), "",
             f"{args.threads} threads, batches of up to {N_BATCH} unless named, medians of {args.runs} interleaved runs, each from "
             f"position 0 of an emptied context. An audio row is {width} floats (the adapter output and the "
             f"DeepStack slices); a token is an id. The window prompt is a {args.window_seconds:g} s window's "
             f"sentence-timestamp prompt: {window_rows} audio rows, their time markers, the chat frame and the "
             f"instruction, {window_positions} positions. llama.cpp: `{result['llama_cpp_system']}`", "",
             "| input | positions | llama.cpp batches | seconds | positions/s | runs |", "|---|---|---|---|---|---|"]
    lines += [f"| {kind} | {counts[kind]} | {batches[kind]} | {round(medians[kind], 2)} "
              f"| {rates[kind]} | {args.runs} |" for kind in feeds]
    lines += ["", f"Audio rows / tokens: {result['rows_over_tokens']}x. "
                  f"Window prompt packed: {result['packed_speedup']}x faster than piece by piece; in batches of "
                  f"up to {LLAMA_CPP_BATCH}, {result['batch_512_over_runtime']}x the time of batches of up to {N_BATCH}."]
    write_results(args.out, result, lines, args.results_dir)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
