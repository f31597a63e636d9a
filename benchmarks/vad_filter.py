"""Skipped silence (`vad_filter=True`, `--vad`): how much audio it leaves out, what that saves,
and what it costs in accuracy, on the embedded nano bundle.

1. Speed: two clips of espeak-ng utterances, stream_latency.py's (~60 s, 1.4 s pauses) and the
   same utterances with long pauses (3-8 s, like a meeting or a dictation with thinking
   breaks), transcribed with sentence timestamps with and without the filter, interleaved
   over `--runs` rounds: median wall time, real-time factor, the share of audio skipped and
   the speed-up (a ratio within the run).
2. Accuracy: the nano model's held-out clips (benchmarks/nano_quality.py's sets: voices and
   speeds never trained on, clean and with noise/echo) transcribed both ways: word error rate
   of the plain transcript and sentence-timestamp error (mean |start|, |end| error of matched
   sentences), so the default can follow the rule "on only if held-out WER is not worse".

    python benchmarks/vad_filter.py --clips 60
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from nano_quality import EVAL_SEED
from results_file import RESULTS, provenance, stamp, write_results  # benchmarks/ is the script's directory
from stream_latency import build_clip

from edge_runtime.features import SAMPLE_RATE
from edge_runtime.transcribe import MossAudio
from moss_audio_edge.export.nano.corpus import held_out_clips, word_errors, words
from moss_audio_edge.export.nano.quality import boundary_errors

SETTINGS = {"off": False, "on": True}


def with_long_pauses(clip: np.ndarray, seed: int = 0) -> np.ndarray:
    """The clip's utterances (split at its silences) with 3-8 s of silence between them."""
    loud = np.concatenate([[False], np.abs(clip) > 1e-4, [False]]).astype(np.int8)
    edges = np.diff(loud)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # runs of loud samples
    rng = np.random.default_rng(seed)
    utterances, start = [], None
    for s, e in zip(starts, ends):  # silences under 0.5 s are inside an utterance
        if start is None:
            start, end = s, e
        elif s - end < SAMPLE_RATE // 2:
            end = e
        else:
            utterances.append(clip[start:end])
            start, end = s, e
    utterances.append(clip[start:end])
    pieces = [np.zeros(SAMPLE_RATE, np.float32)]
    for utterance in utterances:
        pieces += [utterance, np.zeros(int(rng.uniform(3.0, 8.0) * SAMPLE_RATE), np.float32)]
    return np.concatenate(pieces)


def speed(model: MossAudio, clip: np.ndarray, runs: int) -> dict:
    walls: dict[str, list[float]] = {name: [] for name in SETTINGS}
    speech_s = {}
    for _ in range(runs):
        for name, vad in SETTINGS.items():
            started = time.perf_counter()
            segments, info = model.transcribe(clip, timestamps="sentence", vad_filter=vad)
            list(segments)
            walls[name].append(time.perf_counter() - started)
            speech_s[name] = info.speech_s
    audio_s = len(clip) / SAMPLE_RATE
    median = {name: statistics.median(w) for name, w in walls.items()}
    return {"audio_s": round(audio_s, 1), "skipped_share": round(1 - speech_s["on"] / audio_s, 3),
            **{f"wall_s_{n}": round(m, 3) for n, m in median.items()},
            **{f"rtf_{n}": round(m / audio_s, 4) for n, m in median.items()},
            "speedup": round(median["off"] / median["on"], 2)}


def accuracy(model: MossAudio, clips) -> dict:
    out = {}
    for name, vad in SETTINGS.items():
        errors = reference = 0
        boundaries: list[float] = []
        for clip in clips:
            truth = words(" ".join(s.text for s in clip.sentences))
            plain, _ = model.transcribe(clip.audio, timestamps="none", vad_filter=vad)
            stamped, _ = model.transcribe(clip.audio, timestamps="sentence", vad_filter=vad)
            hypothesis = [w for segment in plain for w in words(segment.text)]
            errors += word_errors(truth, hypothesis)
            reference += len(truth)
            boundaries += boundary_errors(clip.sentences, [s for s in stamped if s.timed])
        out[name] = {"wer": round(errors / reference, 4),
                     "timestamp_mae_ms": round(1000 * sum(boundaries) / max(1, len(boundaries)), 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="nano")
    parser.add_argument("--clips", type=int, default=60, help="held-out clips per set")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    command = "python benchmarks/vad_filter.py " + " ".join(sys.argv[1:])
    load_before = os.getloadavg()[0]
    model = MossAudio(args.bundle, threads=args.threads)
    clip, _ = build_clip()
    clips = {"60 s, 1.4 s pauses (stream_latency.py's clip)": clip, "long pauses (3-8 s)": with_long_pauses(clip)}
    speeds = {name: speed(model, audio, args.runs) for name, audio in clips.items()}
    sets = {"clean": held_out_clips(args.clips, EVAL_SEED), "noisy": held_out_clips(args.clips, EVAL_SEED + 1, augment=True)}
    quality = {name: accuracy(model, clips) for name, clips in sets.items()}
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    result = {**stamp(command), "bundle": args.bundle, "runs": args.runs, "load_average": load, "speed": speeds,
              "held_out": quality}
    lines = ["# Skipped silence (vad_filter)", "", provenance(result), "",
             f"Bundle `{args.bundle}`; sentence timestamps; medians of {args.runs} interleaved runs. 1-minute "
             f"load average at the start and end: {load[0]} / {load[1]} (above 2, this 2-core machine was "
             "shared and the times are noisy; the ratios come from interleaved runs).", "",
             "| clip | audio s | skipped | RTF off | RTF on | speed-up |", "|---|---|---|---|---|---|"]
    for name, r in speeds.items():
        lines.append(f"| {name} | {r['audio_s']} | {100 * r['skipped_share']:.0f}% | {r['rtf_off']} | "
                     f"{r['rtf_on']} | {r['speedup']}x |")
    lines += ["", f"Held-out clips ({args.clips} per set, nano_quality.py's seeds):", "",
              "| set | WER off | WER on | sentence MAE off, ms | sentence MAE on, ms |", "|---|---|---|---|---|"]
    for name, q in quality.items():
        lines.append(f"| {name} | {100 * q['off']['wer']:.1f}% | {100 * q['on']['wer']:.1f}% | "
                     f"{q['off']['timestamp_mae_ms']} | {q['on']['timestamp_mae_ms']} |")
    write_results("vad_filter", result, lines, args.results_dir)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
