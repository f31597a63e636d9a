"""Live streaming cost on a 60 s clip of espeak-ng utterances played at real-time pace.

Reports, per bundle: latency from the end of each utterance to its final event (p50/p95),
readout cost with and without draft verification, and the real-time factor (processing
time / audio time, fed as fast as possible).

    python benchmarks/stream_latency.py --bundle tiny=PATH --bundle 4b-q4=PATH [--runs 3]

Writes benchmarks/results/stream_latency.{json,md}. Needs espeak-ng.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_runtime.audio import load_audio
from edge_runtime.features import SAMPLE_RATE as SR
from edge_runtime.stream import StreamConfig, StreamingSession
from edge_runtime.speech import speak
from edge_runtime.transcribe import MossAudio
from results_file import provenance, stamp, write_results  # benchmarks/ is the script's directory

BLOCK = 1600  # 100 ms blocks, as a microphone delivers them
SENTENCES = [
    ("Turn on the kitchen lights and set a timer for seven minutes.", "en-us", 160),
    ("What is the weather like tomorrow morning?", "en-gb", 140),
    ("Play some quiet music in the living room, please.", "en-us+f3", 170),
    ("Call my sister at nine thirty.", "en-gb-x-rp", 150),
    ("Remind me to water the plants on Sunday afternoon.", "en-us+m3", 150),
    ("Open the garage door and switch off the heater.", "en-gb+f2", 165),
    ("Read me the news headlines, then stop.", "en-us", 145),
    ("How long does it take to drive to the airport?", "en-gb", 155),
]
PAUSE_S = 1.4


def build_clip(target_s: float = 60.0) -> tuple[np.ndarray, list[float]]:
    """Utterances separated by pauses, and the second at which each one's speech ends."""
    pieces, ends, position = [], [], 0
    with tempfile.TemporaryDirectory() as scratch:
        i = 0
        while position < target_s * SR:
            text, voice, wpm = SENTENCES[i % len(SENTENCES)]
            audio = load_audio(speak(text, Path(scratch) / f"{i}.wav", voice, wpm))
            loud = np.flatnonzero(np.abs(audio) > 1e-3)
            audio = audio[loud[0]:loud[-1] + 1]
            pieces += [audio, np.zeros(int(PAUSE_S * SR), np.float32)]
            position += len(audio)
            ends.append(position / SR)
            position += int(PAUSE_S * SR)
            i += 1
    return np.concatenate(pieces), ends


def realtime_run(model: MossAudio, clip: np.ndarray, ends: list[float], config: StreamConfig) -> dict:
    """Blocks are released at the pace they would arrive from a microphone; processing
    happens in between, so a slow machine falls behind (and then skips readouts)."""
    session = StreamingSession(model.engine, config)
    finals: list[tuple[float, float]] = []  # (wall clock, event end on the stream clock)
    started = time.monotonic()
    max_lag = busy_s = 0.0  # busy: time spent processing rather than waiting for audio
    for lo in range(0, len(clip), BLOCK):
        arrival = started + (lo + BLOCK) / SR
        time.sleep(max(0.0, arrival - time.monotonic()))
        lag = time.monotonic() - arrival
        max_lag = max(max_lag, lag)
        fed = time.monotonic()
        for event in session.feed(clip[lo:lo + BLOCK], lag_s=lag):
            if event.type == "final":
                finals.append((time.monotonic(), event.end))
        busy_s += time.monotonic() - fed
    fed = time.monotonic()
    for event in session.finish():
        finals.append((time.monotonic(), event.end))
    busy_s += time.monotonic() - fed
    latencies = []
    for end in ends:  # the first final that covers the utterance's end
        covering = [wall for wall, final_end in finals if final_end >= end - 0.05]
        if covering:
            latencies.append(min(covering) - (started + end))
    stats = session.readout_stats
    return {
        "utterances": len(ends), "finals": len(finals), "timed_utterances": len(latencies),
        "latency_p50_s": round(float(np.percentile(latencies, 50)), 2) if latencies else None,
        "latency_p95_s": round(float(np.percentile(latencies, 95)), 2) if latencies else None,
        "max_lag_s": round(max_lag, 2), "busy_s": round(busy_s, 2),
        "readouts": stats["readouts"],
        "readout_mean_s": round(stats["readout_s"] / max(1, stats["readouts"]), 3),
        "draft_tokens": stats["draft_tokens"], "accepted_tokens": stats["accepted_tokens"],
        "decoded_tokens": stats["decoded_tokens"],
    }


def offline_pace_rtf(model: MossAudio, clip: np.ndarray, config: StreamConfig) -> float:
    session = StreamingSession(model.engine, config)
    started = time.perf_counter()
    for lo in range(0, len(clip), BLOCK):
        session.feed(clip[lo:lo + BLOCK])
    session.finish()
    return (time.perf_counter() - started) / (len(clip) / SR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", action="append", required=True, help="NAME=PATH, repeatable")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--timestamps", default="sentence", choices=["none", "sentence", "word"])
    parser.add_argument("--out", default="stream_latency")
    parser.add_argument("--tokens-per-second", type=float, default=None,
                        help="readout length cap per audio second; random weights never stop, so "
                             "this stands in for a real model's transcript length")
    args = parser.parse_args()
    clip, ends = build_clip()
    rows = []
    for spec in args.bundle:
        name, path = spec.split("=", 1)
        model = MossAudio(path, threads=args.threads)
        row: dict = {"bundle": name, "path": path, "llm": model.manifest.llm.dtype,
                     "encoder": model.manifest.encoder.dtype}
        for drafts in (True, False):
            config = StreamConfig(timestamps=args.timestamps, use_drafts=drafts,
                                  tokens_per_second=args.tokens_per_second)
            runs = [realtime_run(model, clip, ends, config) for _ in range(args.runs)]
            key = "drafts" if drafts else "no_drafts"
            row[key] = {field: statistics.median([r[field] for r in runs if r[field] is not None] or [0])
                        for field in runs[0]}
        row["rtf"] = round(statistics.median(
            offline_pace_rtf(model, clip, StreamConfig(timestamps=args.timestamps,
                                                       tokens_per_second=args.tokens_per_second))
            for _ in range(args.runs)), 3)
        rows.append(row)
        print(json.dumps(row))
    result = {
        **stamp("python benchmarks/stream_latency.py " + " ".join(f"--bundle {b}" for b in args.bundle)
                + f" --runs {args.runs} --timestamps {args.timestamps}"
                + (f" --threads {args.threads}" if args.threads else "")
                + (f" --tokens-per-second {args.tokens_per_second}" if args.tokens_per_second else "")),
        "clip_s": round(len(clip) / SR, 1), "utterances": len(ends), "rows": rows,
    }
    lines = [f"# Streaming latency ({args.timestamps} timestamps), {result['clip_s']} s clip, "
             f"{len(ends)} utterances, real-time pace", "",
             f"{provenance(result)} Medians of {args.runs} runs.", "",
             "| bundle | drafts | end-of-utterance → final p50 s | p95 s | readout mean s | draft tokens accepted | max lag s | RTF (as fast as possible) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for key in ("drafts", "no_drafts"):
            r = row[key]
            accepted = f"{r['accepted_tokens']}/{r['draft_tokens']}" if r["draft_tokens"] else "-"
            lines.append(f"| {row['bundle']} ({row['llm']}, encoder {row['encoder']}) | {key == 'drafts'} | "
                         f"{r['latency_p50_s']} | {r['latency_p95_s']} | {r['readout_mean_s']} | {accepted} | "
                         f"{r['max_lag_s']} | {row['rtf'] if key == 'drafts' else ''} |")
    write_results(args.out, result, lines)


if __name__ == "__main__":
    main()
