"""What a follow-up question costs with the audio cached (`model.session(audio)`) against a
fresh `ask()` on the same audio: ~30 s of espeak-ng speech, a question of about 10 tokens, a
1-token answer (so the figure is the cost of getting to the answer: loading, encoding and
prefill for `ask`, the question's tokens alone for the session), medians of `--runs`
interleaved runs; the ratio comes from the same run. Also the cost when another call took
the context in between (the cache is put back from llama.cpp's sequence state).

    python benchmarks/followup_cost.py --bundle nano
    python benchmarks/followup_cost.py --bundle /work/bench/q4b/int4-Q4_K_M --runs 3 --out followup_cost_4b
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from results_file import RESULTS, provenance, stamp, write_results  # benchmarks/ is the script's directory
from stream_latency import build_clip

from edge_runtime.features import SAMPLE_RATE
from edge_runtime.transcribe import MossAudio

QUESTION = "What did the speaker ask for first?"


def timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="nano")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--out", default="followup_cost", help="results file name (e.g. followup_cost_4b)")
    args = parser.parse_args()
    command = "python benchmarks/followup_cost.py " + " ".join(sys.argv[1:])
    load_before = os.getloadavg()[0]
    model = MossAudio(args.bundle, threads=args.threads)
    clip = build_clip(args.seconds)[0][: int(args.seconds * SAMPLE_RATE)]
    other = clip[: 5 * SAMPLE_RATE]
    session = model.session(clip)
    question_tokens = len(model.engine.tokenize(QUESTION))
    fresh, cached, restored = [], [], []
    for _ in range(args.runs):
        fresh.append(timed(lambda: model.ask(clip, QUESTION, max_tokens=1)))
        session.ask(QUESTION, max_tokens=1)  # the session holds the context again
        cached.append(timed(lambda: session.ask(QUESTION, max_tokens=1)))
        model.ask(other, QUESTION, max_tokens=1)  # another call takes the context
        restored.append(timed(lambda: session.ask(QUESTION, max_tokens=1)))
    median = {name: statistics.median(values) for name, values in
              (("fresh", fresh), ("cached", cached), ("restored", restored))}
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    result = {**stamp(command), "bundle": args.bundle, "audio_s": round(len(clip) / SAMPLE_RATE, 1),
              "question_tokens": question_tokens, "audio_positions": session.audio_positions, "runs": args.runs,
              "load_average": load, **{f"{k}_ms": round(1000 * v, 1) for k, v in median.items()},
              "cached_speedup": round(median["fresh"] / median["cached"], 1),
              "restored_speedup": round(median["fresh"] / median["restored"], 1)}
    lines = ["# Follow-up questions: cached audio against a fresh ask()", "", provenance(result), "",
             f"Bundle `{args.bundle}`; {result['audio_s']} s of speech ({session.audio_positions} prompt positions up "
             f"to the end of the audio); the question is {question_tokens} tokens; a 1-token answer; medians of "
             f"{args.runs} interleaved runs. 1-minute load average at the start and end: {load[0]} / {load[1]} "
             "(2 cores: above 2 the machine was shared).", "",
             "| path | ms to the answer | vs fresh `ask()` |", "|---|---|---|",
             f"| fresh `ask(audio, question)` | {result['fresh_ms']} | 1x |",
             f"| `session.ask(question)`, cache in place | {result['cached_ms']} | {result['cached_speedup']}x cheaper |",
             f"| `session.ask(question)` after another call (cache put back) | {result['restored_ms']} | "
             f"{result['restored_speedup']}x cheaper |"]
    write_results(args.out, result, lines, args.results_dir)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
