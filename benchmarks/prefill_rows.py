"""Prefill speed of audio rows (embedding batches, (1+K)*hidden floats a row, DeepStack
included) against text tokens (token batches) through the runtime's llama.cpp context: the
same number of positions from position 0, interleaved, medians of `--runs`. Answers whether
feeding audio as embeddings costs more than the same number of prompt tokens.

    python benchmarks/prefill_rows.py --bundle /work/bench/q4b/int4-Q4_K_M --positions 256 --runs 3
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import llama_cpp
import numpy as np
from results_file import RESULTS, provenance, stamp, write_results  # benchmarks/ is the script's directory

from edge_runtime.bundle import load_bundle
from edge_runtime.llm import LlamaModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--positions", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", default="prefill_rows")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    model = LlamaModel(bundle.llm_path, n_ctx=args.positions + 256, threads=args.threads)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1000, model.n_vocab - 1000, args.positions).tolist()
    # rows at the scale of real adapter output: the cost does not depend on the values
    rows = (rng.standard_normal((args.positions, model.n_embd_inp)) * 0.02).astype(np.float32)
    model.eval_tokens(tokens[:16], 0)  # first-call set-up kept out of the timings
    model.clear()
    seconds: dict[str, list[float]] = {"tokens": [], "audio rows": []}
    for _ in range(args.runs):
        for kind, feed in (("tokens", lambda: model.eval_tokens(tokens, 0)),
                           ("audio rows", lambda: model.eval_embeddings(rows, 0))):
            started = time.perf_counter()
            feed()
            seconds[kind].append(time.perf_counter() - started)
            model.clear()
    rates = {kind: round(args.positions / statistics.median(s), 2) for kind, s in seconds.items()}
    result = {**stamp("python benchmarks/prefill_rows.py " + " ".join(sys.argv[1:])),
              "bundle": str(args.bundle), "threads": args.threads, "positions": args.positions,
              "runs": args.runs, "n_batch": model.n_batch, "row_floats": model.n_embd_inp,
              "llama_cpp_system": llama_cpp.llama_print_system_info().decode().strip(),
              "positions_per_s": rates,
              "rows_over_tokens": round(rates["audio rows"] / rates["tokens"], 3)}
    lines = ["# Prefill: audio rows against text tokens", "", provenance(result), "",
             f"{args.positions} positions from position 0, batches of {model.n_batch}, {args.threads} threads, "
             f"medians of {args.runs} interleaved runs. An audio row is {model.n_embd_inp} floats (the adapter "
             "output and the DeepStack slices); a token is an id. llama.cpp: "
             f"`{result['llama_cpp_system']}`", "",
             "| input | positions/s | runs |", "|---|---|---|"]
    lines += [f"| {kind} | {rate} | {args.runs} |" for kind, rate in rates.items()]
    lines += ["", f"Audio rows / tokens: {result['rows_over_tokens']}x."]
    write_results(args.out, result, lines, args.results_dir)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
