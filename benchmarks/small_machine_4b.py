"""MOSS-Audio-4B on a small machine: the path a transcription took before the small-machine work
against the path it takes now, with forced transcripts (docs/benchmarks.md#forced-output).

Random weights never stop, so every decode here is fed the clip's true transcript in the
sentence format, then the stop token, while every step is still computed: the cost of a real
model writing that transcript. The clip is stream_latency.py's (~61.6 s of espeak-ng
utterances with 1.4 s pauses).

1. end to end, a fresh process per run (RTF = processing time / audio time, loading
   excluded; peak RSS includes loading), for each bundle:
   - before: the fixed 8192-token context the runtime used to take, one window at a time, all
     the audio fed, every run of prompt tokens (a time marker's digits, the chat frame) a
     llama.cpp batch of its own (the runtime without packed prefill: its token rows withheld),
     batches of up to 512 positions;
   - now: the context sized to the call, `parallel=3` windows decoded together, `vad_filter`,
     packed prefill (docs/format.md#packed-prefill) in even batches of up to llm.N_BATCH;
2. streaming at real-time pace (stream_latency.py's runner): end of utterance -> final p50/p95,
   the largest lag, and the share of real time spent processing; that share scaled to a
   Raspberry Pi 5 and a Jetson Orin by the ratio of their public specs to this machine's
   measured limits (bench_report.py's targets; estimates, marked so).

    python benchmarks/small_machine_4b.py --bundle int8-Q4_K_M=/work/bench/q4b/int8-Q4_K_M \\
        --bundle int4-Q4_K_M=/work/bench/q4b/int4-Q4_K_M

Writes benchmarks/results/small_machine_4b.{json,md}. The bundles come from bench_4b.py's
build (quantize_4b.py's variants).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import soundfile

import llm_bench  # benchmarks/ is the script's directory
from bench_4b import encoder_bytes, streaming
from bench_report import TARGETS
from results_file import RESULTS, provenance, stamp, write_results
from stream_latency import PAUSE_S, SENTENCES, SR, build_clip

from edge_runtime.bundle import load_bundle
from edge_runtime.llm import N_BATCH
from edge_runtime.stream import StreamConfig

PATHS = {
    "before": {"n_ctx": 8192, "parallel": 1, "vad_filter": False, "packed_prompt": False, "n_batch": 512},
    "now": {"n_ctx": None, "parallel": 3, "vad_filter": True, "packed_prompt": True, "n_batch": N_BATCH},
}

# One run in a fresh process: argv = bundle, clip, threads, ends (JSON), path settings (JSON).
END_TO_END = """
import json, sys, time
from edge_runtime.audio import load_audio
from edge_runtime.llm import LlamaModel
from edge_runtime.measure import peak_rss_bytes
from edge_runtime.transcribe import MossAudio
from small_machine_4b import transcript_between
bundle, clip, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
ends, path = json.loads(sys.argv[4]), json.loads(sys.argv[5])
if not path["packed_prompt"]:  # no token rows: every token run is fed as a batch of its own
    LlamaModel.token_rows = lambda self, tokens: None
samples = load_audio(clip)
model = MossAudio(bundle, threads=threads, n_ctx=path["n_ctx"], parallel=path["parallel"], n_batch=path["n_batch"])
model.forced_output = lambda start, end: transcript_between(ends, start, end)
started = time.perf_counter()
segments, info = model.transcribe(samples, timestamps="sentence", vad_filter=path["vad_filter"])
segments = list(segments)
wall = time.perf_counter() - started
print(json.dumps({"audio_s": info.duration, "speech_s": info.speech_s, "windows": len(info.windows),
                  "segments": len(segments), "finish_reasons": info.finish_reasons, "wall_s": wall,
                  "rtf": wall / info.duration, "timings_s": info.timings,
                  "peak_rss_gib": peak_rss_bytes() / 2**30}))
"""


def utterance_starts(ends: list[float]) -> list[float]:
    """Where each of build_clip's utterances starts: the clip opens with speech, and a pause of
    PAUSE_S separates an utterance's end from the next one's start."""
    return [0.0] + [end + PAUSE_S for end in ends[:-1]]


def transcript_between(ends: list[float], start_s: float, end_s: float) -> str:
    """The true transcript, in the sentence format, of the utterances that end inside
    [start_s, end_s] of the file, timed from `start_s` (what a model hearing that audio as one
    window writes)."""
    text = ""
    for i, (start, end) in enumerate(zip(utterance_starts(ends), ends)):
        if start_s <= end <= end_s + 0.05:
            sentence = SENTENCES[i % len(SENTENCES)][0]
            text += f"[{max(0.0, start - start_s):.2f}]{sentence}[{end - start_s:.2f}]"
    return text


def end_to_end(bundle: Path, clip: Path, ends: list[float], threads: int, path: dict, runs: int) -> dict:
    """Medians over `runs` fresh processes; the largest peak RSS."""
    results = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", END_TO_END, str(bundle), str(clip), str(threads),
                               json.dumps(ends), json.dumps(path)],
                              capture_output=True, text=True, cwd=Path(__file__).parent,
                              env=os.environ | {"PYTHONPATH": str(Path(__file__).parent)})
        if done.returncode != 0:
            raise SystemExit(f"end-to-end run of {bundle} {path} failed:\n{done.stderr}")
        results.append(json.loads(done.stdout.splitlines()[-1]))
    first = results[0]
    return {"runs": runs, "settings": path, "audio_s": round(first["audio_s"], 2), "speech_s": first["speech_s"],
            "windows": first["windows"], "segments": first["segments"], "finish_reasons": first["finish_reasons"],
            "rtf": round(statistics.median(r["rtf"] for r in results), 3),
            "wall_s": round(statistics.median(r["wall_s"] for r in results), 2),
            "peak_rss_gib": round(max(r["peak_rss_gib"] for r in results), 2),
            "timings_s": {k: round(statistics.median(r["timings_s"][k] for r in results), 2)
                          for k in first["timings_s"]}}


def projections(busy_share: float, machine: dict) -> dict:
    """The share of real time a target would spend processing, scaled from this machine's by
    the slower of its two ratios (memory bandwidth for decode, matrix throughput for the rest):
    an estimate from public specs, not a measurement."""
    out = {}
    for target, spec in TARGETS.items():
        slowdown = max(machine["bandwidth_gb_s"] / spec["bandwidth_gb_s"],
                       machine["matmul_gflop_s"] / spec["matmul_gflop_s"])
        out[target] = {"busy_share": round(busy_share * slowdown, 2), "slowdown": round(slowdown, 2),
                       "keeps_up": busy_share * slowdown < 1.0}
    return out


def markdown(result: dict) -> list[str]:
    lines = ["# MOSS-Audio-4B on a small machine: before and now", "", provenance(result), "",
             f"Random weights with the published 4B config, {result['threads']} threads, forced transcripts "
             "(docs/benchmarks.md#forced-output): every decode is fed the clip's true sentence-format transcript "
             f"and the stop token. Clip: {result['clip']['seconds']} s, {result['clip']['utterances']} espeak-ng "
             f"utterances. 1-minute load average at the start and end: {result['load_average'][0]} / "
             f"{result['load_average'][1]}.", "",
             "## End to end (a fresh process per run; medians; peak RSS includes loading)", "",
             "before: fixed 8192-token context, one window at a time, all audio, each run of prompt tokens (time "
             "markers, chat frame) its own llama.cpp batch. now: context sized to the call, `parallel=3`, "
             "`vad_filter=True`, packed prefill (prompt tokens in the audio rows' batches).", "",
             "| bundle | path | RTF | speed-up | peak RSS GiB | weights GiB | RSS - weights | audio fed s | windows | "
             "encode s | prefill s | decode s | runs |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, paths in result["end_to_end"].items():
        weights = result["bundles"][name]["weights_gib"]
        for path, r in paths.items():
            t = r["timings_s"]
            speedup = round(paths["before"]["rtf"] / r["rtf"], 2)
            lines.append(f"| {name} | {path} | {r['rtf']} | {speedup}x | {r['peak_rss_gib']} | {weights} | "
                         f"{round(r['peak_rss_gib'] - weights, 2)} | {r['speech_s']} | {r['windows']} | "
                         f"{t['encode_s']} | {t['prefill_s']} | {t['decode_s']} | {r['runs']} |")
    lines += ["", "## Streaming at real-time pace (forced transcripts; drafts on)", "",
              "| bundle | latency p50 s | latency p95 s | max lag s | busy share of real time | keeps up | runs |",
              "|---|---|---|---|---|---|---|"]
    for name, s in result["streaming"].items():
        lines.append(f"| {name} | {s['latency_p50_s']} | {s['latency_p95_s']} | {s['max_lag_s']} | "
                     f"{s['busy_share']} | {'yes' if s['busy_share'] < 1 else 'no'} | {s['runs']} |")
    lines += ["", "Estimates, not measurements: the busy share scaled by the slower of the target's spec ratios "
              "to this machine's measured limits (bench_report.py's targets).", "",
              "| bundle | target | slowdown | estimated busy share | would keep up |", "|---|---|---|---|---|"]
    for name, s in result["streaming"].items():
        for target, p in s["estimates"].items():
            lines.append(f"| {name} | {target} | {p['slowdown']}x | {p['busy_share']} | "
                         f"{'yes' if p['keeps_up'] else 'no'} (estimate) |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", action="append", required=True, help="NAME=PATH, repeatable")
    parser.add_argument("--stream", default=None, help="the bundle streamed (default: the last --bundle)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--stream-runs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60.0, help="the clip's length (about)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    command = "python benchmarks/small_machine_4b.py " + " ".join(sys.argv[1:])
    load_before = os.getloadavg()[0]  # evidence that nothing else ran: ~0 on a quiet machine
    bundles = {name: Path(path) for name, path in (spec.split("=", 1) for spec in args.bundle)}
    clip, ends = build_clip(args.seconds)
    machine = llm_bench.machine_limits(args.threads)
    e2e: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        clip_path = Path(scratch) / "clip.wav"
        soundfile.write(clip_path, clip, SR)
        for name, bundle in bundles.items():
            e2e[name] = {}
            for path, settings in PATHS.items():
                print(f"end to end {name} {path}", flush=True)
                e2e[name][path] = end_to_end(bundle, clip_path, ends, args.threads, settings, args.runs)
    streamed = args.stream or list(bundles)[-1]
    print(f"streaming {streamed}", flush=True)
    config = StreamConfig(timestamps="sentence", forced_output=lambda start, end: transcript_between(ends, start, end))
    stream = streaming(bundles[streamed], clip, ends, args.threads, config, args.stream_runs)
    stream["busy_share"] = round(stream.pop("busy_s") / (len(clip) / SR), 2)
    stream["estimates"] = projections(stream["busy_share"], machine)
    weights = {}
    for name, bundle in bundles.items():
        manifest = load_bundle(bundle).manifest
        weights[name] = {"weights_gib": round((encoder_bytes(bundle, manifest) + manifest.llm.size) / 2**30, 2),
                         "path": str(bundle)}
    result = {**stamp(command), "threads": args.threads, "runs": args.runs,
              "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
              "machine_limits": machine, "bundles": weights,
              "clip": {"seconds": round(len(clip) / SR, 1), "utterances": len(ends)},
              "end_to_end": e2e, "streaming": {streamed: stream}}
    lines = markdown(result)
    write_results("small_machine_4b", result, lines, args.results_dir)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
