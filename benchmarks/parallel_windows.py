"""Parallel windows: one long file transcribed with `parallel` = 1, 2, 3 (`--parallel N`) by a
real model that writes and stops by itself, the embedded nano bundle.

stream_latency.py's clip of espeak-ng utterances with pauses (~120 s) is cut into windows of
`--window-seconds` and transcribed with sentence timestamps, the settings interleaved over
`--runs` rounds; each figure is a median, and the speed-up a ratio to `parallel=1` in the
same run. Whether each setting gives the segments of `parallel=1` is recorded, with the
runtime's default f16 KV cache and with exact arithmetic (f32 cache, flash attention off).

    python benchmarks/parallel_windows.py
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from results_file import RESULTS, provenance, stamp, write_results  # benchmarks/ is the script's directory
from stream_latency import build_clip

from edge_runtime.features import SAMPLE_RATE
from edge_runtime.transcribe import MossAudio

# the runtime's defaults, and exact arithmetic: there the batch's logits equal one sequence's
ARITHMETIC = {"default (f16 KV)": {}, "exact (f32 KV, no flash attention)": {"kv_type": "f32", "flash_attention": "off"}}


def run(model: MossAudio, clip, window_seconds: float) -> tuple[float, list[tuple], int]:
    """(wall seconds, segments, windows) of one transcription."""
    started = time.perf_counter()
    segments, info = model.transcribe(clip, timestamps="sentence", window_seconds=window_seconds)
    got = [(s.start, s.end, s.text) for s in segments]
    return time.perf_counter() - started, got, len(info.windows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="nano")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--window-seconds", type=float, default=20.0)
    parser.add_argument("--parallel", default="1,2,3")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    settings = [int(n) for n in args.parallel.split(",")]
    clip, _ = build_clip(args.seconds)
    audio_s = len(clip) / SAMPLE_RATE
    rows, segments, windows = {}, {}, 0
    for arithmetic, options in ARITHMETIC.items():
        models = {n: MossAudio(args.bundle, device="cpu", threads=args.threads, parallel=n, **options)
                  for n in settings}
        for model in models.values():
            run(model, clip[: 5 * SAMPLE_RATE], args.window_seconds)  # warm-up
        walls: dict[int, list[float]] = {n: [] for n in settings}
        outputs: dict[int, list[tuple]] = {}
        for round_ in range(args.runs):
            for n in settings if round_ % 2 == 0 else reversed(settings):  # neither always goes first
                wall, got, windows = run(models[n], clip, args.window_seconds)
                walls[n].append(wall)
                outputs.setdefault(n, got)
                if got != outputs[n]:
                    sys.exit(f"parallel={n} gave different segments in two runs")
        base, segments[arithmetic] = statistics.median(walls[settings[0]]), len(outputs[settings[0]])
        rows[arithmetic] = {
            n: {"wall_s": round(statistics.median(walls[n]), 2), "rtf": round(statistics.median(walls[n]) / audio_s, 3),
                "speedup": round(base / statistics.median(walls[n]), 2),
                "segments_differing_from_parallel_1": sum(a != b for a, b in zip(outputs[n], outputs[settings[0]]))
                + abs(len(outputs[n]) - segments[arithmetic])} for n in settings}
        for model in models.values():
            model.close()
    command = "python benchmarks/parallel_windows.py " + " ".join(sys.argv[1:])
    result = {**stamp(command), "bundle": args.bundle, "audio_s": round(audio_s, 1), "windows": windows,
              "window_seconds": args.window_seconds, "threads": args.threads, "runs": args.runs,
              "segments": segments, "parallel": rows}
    lines = ["# Parallel windows", "", provenance(result), "",
             f"{args.bundle} bundle, {result['audio_s']} s clip of espeak-ng utterances with pauses, "
             f"{windows} windows of <= {args.window_seconds:g} s, sentence timestamps, {args.threads} threads; "
             f"medians of {args.runs} interleaved runs. The model stops by itself (a real transcript).", "",
             "| arithmetic | parallel | wall s | RTF | speed-up vs 1 | segments differing from parallel 1 |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {arithmetic} | {n} | {r['wall_s']} | {r['rtf']} | {r['speedup']} | "
              f"{r['segments_differing_from_parallel_1']} of {segments[arithmetic]} |"
              for arithmetic, by_n in rows.items() for n, r in by_n.items()]
    write_results("parallel_windows", result, lines, args.results_dir)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
