"""MOSS-Audio-4B measured at full scale on this machine: the figures README.md and docs/benchmarks.md quote.

A random-weight checkpoint with the published MOSS-Audio-4B-Instruct config costs exactly
what the real one costs, so every speed and memory figure is real. Steps:

1. build (each step skipped when its output is already in --work-dir; the table says which
   run timed it): write the checkpoint (3 bf16 shards, real config and tokenizer files) and
   export it to an F16 bundle (export_4b.py's steps), then quantize it to int8 + Q8_0 and
   int4 + Q4_K_M (quantize_4b.py's step); each in its own process, wall time and peak RSS.
2. machine: read bandwidth and fp32 GEMM throughput, with 1 and all threads.
3. encoder: ms per 4 s chunk, fp32 / int8 / int4, with 1 and all threads.
4. LLM: prefill (512 tokens) and decode (64 tokens, a fixed length: random weights never stop)
   tokens/s of F16, Q8_0 and Q4_K_M, through the runtime and through llama.cpp's own loop on
   the same context; the overhead ratio; the limits the measured bandwidth and throughput set.
5. end to end: stream_latency.py's clip of espeak-ng utterances (~60 s), transcribed with
   sentence timestamps, a fresh process per run: real-time factor and peak RSS.
6. streaming: the same clip at real-time pace through stream_latency.py's runner.
7. estimates for Raspberry Pi 5 and Jetson Orin (bench_report.py).

    flock /work/bench/.cpu.lock python benchmarks/bench_4b.py --work-dir /work/bench

Writes benchmarks/results/bench_4b.{json,md,png}. `--smoke --bundle NAME=PATH ...` measures
ready bundles (no build) with short runs: the CI check that this script works.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import llama_cpp
import numpy as np
import onnxruntime
import soundfile
import llm_bench  # benchmarks/ is the script's directory
from bench_report import write_outputs
from export_4b import EXPORT, ROOT, WRITE_CHECKPOINT, run_step
from quantize_4b import QUANTIZE, VARIANTS
from results_file import RESULTS, stamp
from stream_latency import PAUSE_S, SENTENCES, SR, build_clip, realtime_run

from edge_runtime.bundle import load_bundle
from edge_runtime.encoder import AudioEncoder
from edge_runtime.llm import LlamaModel
from edge_runtime.measure import encoder_ms_per_chunk
from edge_runtime.stream import StreamConfig
from edge_runtime.transcribe import MossAudio

CHECKPOINT, F16_BUNDLE, QUANTIZED = "moss-audio-4b-random", "moss-audio-4b-random-f16", "q4b"
STEPS_FILE = "bench_4b_steps.json"

END_TO_END = """
import json, sys
from edge_runtime.audio import load_audio
from edge_runtime.measure import peak_rss_bytes, transcribe_clip
from edge_runtime.transcribe import MossAudio
bundle, clip, threads, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
samples = load_audio(clip)
model = MossAudio(bundle, threads=threads)  # the runtime's defaults otherwise
result = transcribe_clip(model, samples, tokens_per_second=rate)
print(json.dumps(result | {"peak_rss_gib": round(peak_rss_bytes() / 2**30, 2)}))
"""


# --- 1. build --------------------------------------------------------------------------------

def earlier_record(step: str, work: Path) -> dict:
    """Where an output already in place was timed: export_4b.py's or quantize_4b.py's results."""
    if step in ("write_checkpoint", "export") and (RESULTS / "export_4b.json").exists():
        earlier = json.loads((RESULTS / "export_4b.json").read_text())
        if step in earlier["steps"]:
            return earlier["steps"][step] | {k: earlier[k] for k in ("machine", "date", "command")}
    quantize_steps = work / QUANTIZED / "quantize_steps.json"
    variant = step.removeprefix("quantize ")
    if quantize_steps.exists() and variant in (recorded := json.loads(quantize_steps.read_text())):
        date = datetime.date.fromtimestamp(quantize_steps.stat().st_mtime).isoformat()
        return recorded[variant] | {"date": date,
                                    "command": f"python benchmarks/quantize_4b.py --work-dir {work / QUANTIZED}"}
    return {"wall_s": None, "peak_rss_gib": None, "date": None, "command": "found in place, not timed"}


def build(work: Path, threads: int, command: str) -> tuple[dict[str, Path], dict[str, dict]]:
    """The F16 bundle and the two quantized ones, made where missing; the step records."""
    checkpoint, f16 = work / CHECKPOINT, work / F16_BUNDLE
    bundles = {"fp32-F16": f16, **{name: work / QUANTIZED / name for name in VARIANTS}}
    plan = [("write_checkpoint", checkpoint / "config.json", WRITE_CHECKPOINT, [checkpoint, ROOT]),
            ("export", f16 / "manifest.json", EXPORT, [checkpoint, f16, "F16"])]
    plan += [(f"quantize {name}", bundles[name] / "manifest.json", QUANTIZE,
              [f16, bundles[name], encoder, llm, threads]) for name, (encoder, llm) in VARIANTS.items()]
    steps_file = work / STEPS_FILE
    steps = json.loads(steps_file.read_text()) if steps_file.exists() else {}
    for step, done, code, argv in plan:
        if step in steps:
            continue
        if done.exists() or (step == "write_checkpoint" and (f16 / "manifest.json").exists()):
            steps[step] = earlier_record(step, work)
        else:
            print(f"build: {step}", flush=True)
            steps[step] = run_step(code, *map(str, argv)) | {"date": datetime.date.today().isoformat(),
                                                            "command": command}
        steps_file.write_text(json.dumps(steps, indent=2))
    return bundles, steps


# --- 3-6. measurements -----------------------------------------------------------------------

def encoder_speed(bundles: dict[str, Path], thread_counts: list[int], runs: int) -> dict[str, dict[str, float]]:
    """ms per chunk by variant, for each thread count."""
    out = {}
    for threads in thread_counts:
        encoders = {}
        for name, bundle in ((name, load_bundle(path)) for name, path in bundles.items()):
            m = bundle.manifest
            encoders[name] = AudioEncoder(bundle.encoder_path, m.audio, m.model.row_width, threads=threads)
        out[str(threads)] = encoder_ms_per_chunk(encoders, runs)
        del encoders
        gc.collect()
    return out


def llm_speed(bundles: dict[str, Path], threads: int, runs: int, prefill: int, decode: int,
              machine: dict) -> dict[str, dict]:
    """Runtime vs llama.cpp loop, costs and limits by variant."""
    out = {}
    for name, bundle in ((name, load_bundle(path)) for name, path in bundles.items()):
        print(f"LLM {name}", flush=True)
        model = MossAudio(bundle, device="cpu", threads=threads, n_ctx=prefill + decode + 64)
        costs = llm_bench.llm_costs(model.engine._llm, bundle.llm_path, prefill, decode)
        out[name] = llm_bench.llm_speed(model.engine, prefill, decode, runs) | {
            "costs": costs, "limits": llm_bench.llm_limits(costs, machine)}
        model.close()
    return out


def reference_transcript_tokens(bundle: Path, ends: list[float]) -> int:
    """Tokens of the clip's true transcript with sentence timestamps, as the model would write it."""
    text = "".join(f"[{(ends[i - 1] + PAUSE_S) if i else 0.0:.2f}]{SENTENCES[i % len(SENTENCES)][0]}[{end:.2f}]"
                   for i, end in enumerate(ends))
    llm = LlamaModel(load_bundle(bundle).llm_path, n_ctx=256, threads=1)
    try:
        return len(llm.tokenize(text, parse_special=False))
    finally:
        llm.close()


def end_to_end(bundle: Path, clip: Path, threads: int, rate: float, runs: int) -> dict:
    """Median RTF and the largest peak RSS over `runs` fresh processes."""
    results = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", END_TO_END, str(bundle), str(clip), str(threads), str(rate)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"end-to-end run of {bundle} failed:\n{done.stderr}")
        results.append(json.loads(done.stdout.splitlines()[-1]))
    first = results[0]
    return {"runs": runs, "audio_s": first["audio_s"], "windows": first["windows"],
            "decode_budget_per_window": first["decode_budget_per_window"],
            "rtf": statistics.median(r["rtf"] for r in results),
            "peak_rss_gib": max(r["peak_rss_gib"] for r in results),
            "timings_s": {k: round(statistics.median(r["timings_s"][k] for r in results), 2)
                          for k in first["timings_s"]}}


def streaming(bundle: Path, clip: np.ndarray, ends: list[float], threads: int, config: StreamConfig,
              runs: int) -> dict:
    """Medians of stream_latency.realtime_run over `runs` real-time passes."""
    model = MossAudio(bundle, threads=threads)
    results = [realtime_run(model, clip, ends, config) for _ in range(runs)]
    model.close()
    return {field: statistics.median([r[field] for r in results if r[field] is not None] or [0])
            for field in results[0]} | {"runs": runs}


# --- main ------------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, required=True, help="holds the checkpoint and bundles (~30 GB)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement; medians are reported")
    parser.add_argument("--e2e", default="fp32-F16,int8-Q8_0,int4-Q4_K_M", help="variants run end to end")
    parser.add_argument("--stream", default="int4-Q4_K_M", help="variants streamed at real-time pace")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--smoke", action="store_true", help="CI check: ready bundles, short runs, short clip")
    parser.add_argument("--bundle", action="append", default=[], help="with --smoke: NAME=PATH, repeatable")
    return parser.parse_args()


def encoder_bytes(directory: Path, manifest) -> int:
    """The encoder graph and its external data (a 4B fp32 encoder keeps its weights outside)."""
    return sum((directory / name).stat().st_size for name in (manifest.encoder.path, *manifest.encoder.extra_files))


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()[0]  # evidence that nothing else ran: ~0 on a quiet machine
    command = "python benchmarks/bench_4b.py " + " ".join(sys.argv[1:])
    if args.smoke:
        bundles = {name: Path(path) for name, path in (spec.split("=", 1) for spec in args.bundle)}
        steps: dict[str, dict] = {}
        args.e2e, args.stream = ",".join(bundles), next(iter(bundles))
        prefill, decode, clip_s, buffer_bytes = 64, 8, 3.0, 2**26
    else:
        bundles, steps = build(args.work_dir, args.threads, command)
        prefill, decode, clip_s, buffer_bytes = llm_bench.PREFILL_TOKENS, llm_bench.DECODE_TOKENS, 60.0, llm_bench.BANDWIDTH_BYTES
    thread_counts = sorted({1, args.threads})
    print("machine limits", flush=True)
    machine = {str(t): llm_bench.machine_limits(t, buffer_bytes) for t in thread_counts}
    print("encoder", flush=True)
    encoder = encoder_speed(bundles, thread_counts, args.runs)
    llm = llm_speed(bundles, args.threads, args.runs, prefill, decode, machine[str(args.threads)])
    clip, ends = build_clip(clip_s)
    reference = reference_transcript_tokens(min(bundles.values(), key=lambda b: load_bundle(b).manifest.llm.size), ends)
    rate = round(reference / (len(clip) / SR), 2)
    e2e, stream = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        clip_path = Path(scratch) / "clip.wav"
        soundfile.write(clip_path, clip, SR)
        for name in args.e2e.split(","):
            print(f"end to end {name}", flush=True)
            e2e[name] = end_to_end(bundles[name], clip_path, args.threads, rate, args.runs)
    for name in filter(None, args.stream.split(",")):
        print(f"streaming {name}", flush=True)
        config = StreamConfig(timestamps="sentence", tokens_per_second=rate)
        stream[name] = streaming(bundles[name], clip, ends, args.threads, config, args.runs)
    manifests = {name: load_bundle(path).manifest for name, path in bundles.items()}
    result = {
        **stamp(command),
        "threads": args.threads, "runs": args.runs, "smoke": args.smoke,
        "load_average_1min": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
        "versions": {"onnxruntime": onnxruntime.__version__, "llama_cpp_python": llama_cpp.__version__,
                     "llama_system_info": llama_cpp.llama_print_system_info().decode().strip()},
        "bundles": {name: {"path": str(bundles[name]), "encoder": m.encoder.dtype, "llm": m.llm.dtype,
                           "encoder_gib": round(encoder_bytes(bundles[name], m) / 2**30, 3),
                           "llm_gib": round(m.llm.size / 2**30, 3)}
                    for name, m in manifests.items()},
        "build": steps, "machine_limits": machine, "encoder_ms_per_chunk": encoder, "llm": llm,
        "clip": {"seconds": round(len(clip) / SR, 1), "utterances": len(ends), "reference_tokens": reference,
                 "tokens_per_second": rate},
        "end_to_end": e2e, "streaming": stream,
    }
    write_outputs(result, args.results_dir, "bench_4b_smoke" if args.smoke else "bench_4b")


if __name__ == "__main__":
    main()
