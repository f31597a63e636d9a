"""This runtime and CrispASR side by side on MOSS-Audio-4B, CPU only, on the same clips.

CrispASR (github.com/CrispStrobe/CrispASR) is a C++/ggml runtime that runs MOSS-Audio-4B from
one GGUF (`crispasr --backend moss-audio`); this runtime runs an ONNX encoder and a llama.cpp
GGUF LLM. --crispasr-build is a CMake build of CrispASR: its bin/crispasr is used, or, where
that CLI could not be linked, bin/moss_audio_run, a driver of CrispASR's moss_audio library
that does what the CLI does for this backend (crispasr_program; how both were built and
why: benchmarks/crispasr/README.md). Both get the same random-weight 4B checkpoint (the real shapes, so the real costs),
the same espeak-ng speech clips of 5, 30 and 60 s (stream_latency.py's utterances; whole
utterances, then silence to the clip's length) and the same thread count. Each run is a fresh
process, timed from start to exit (model loading included): wall time, RTF = wall / audio
seconds, and the child's peak RSS (os.wait4). Runs of the rows are interleaved; medians of
--runs for time, the largest peak RSS.

Steps (each skipped when its output is in --work-dir):
1. convert the checkpoint with CrispASR's own tools: models/convert-moss-audio-to-gguf.py
   (F16 GGUF; needs torch, gguf, safetensors, transformers: --converter-python) and
   crispasr-quantize to q4_k, the type closest to our bundle's Q4_K_M LLM (crispasr-quantize
   keeps MOSS-Audio's encoder, adapter and DeepStack mergers at F16); wall time and peak RSS.
2. make the clips; 3. run both runtimes.

Token budget: random weights never emit the stop token, so every window decodes its whole
budget. Our runtime gets the length of the clip's true transcript with sentence timestamps
(bench_4b.reference_transcript_tokens), split over its windows (`--max-tokens`), and, as a
second row, CrispASR's budget. CrispASR's moss-audio backend has no cap: it decodes 512 tokens
per 30 s slice, hard-coded (src/moss_audio.cpp, `int max_new = 512`; its `-n` flag is not read
by that backend). Its row is measured at that budget; a derived row estimates it at the
transcript budget, from its own per-token decode time (stderr lines timed as they arrive).

    python benchmarks/crispasr_compare.py --crispasr-build /work/crispasr/build \\
        --checkpoint /work/bench/moss-audio-4b-random --bundle /work/bench/q4b/int4-Q4_K_M \\
        --work-dir /work/bench/crispasr --converter-python /work/crispasr/venv/bin/python

Writes benchmarks/results/crispasr_compare.{json,md}. Takes over an hour at --runs 3 with
2 threads, most of it the 512-token-per-window rows; run it on a quiet machine (`--clips 5
--runs 1` checks the whole path in a few minutes; `--convert-only` does step 1 alone).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import llama_cpp
import numpy as np
import onnxruntime
import soundfile

from bench_4b import reference_transcript_tokens  # benchmarks/ is the script's directory
from results_file import RESULTS, provenance, stamp, write_results
from stream_latency import SR, build_clip

from edge_runtime.windows import plan_windows

NAME = "crispasr_compare"
CRISPASR_BUDGET = 512  # tokens per slice, fixed in CrispASR's src/moss_audio.cpp
STEPS_FILE = "crispasr_convert_steps.json"
F16_GGUF, Q4K_GGUF = "moss-audio-4b-crispasr-f16.gguf", "moss-audio-4b-crispasr-q4_k.gguf"


# --- 1. conversion with CrispASR's tools ----------------------------------------------------

def run_timed(argv: list[str], log: Path) -> dict:
    """Run argv to completion, output to `log`; wall time and the child's peak RSS."""
    with open(log, "w") as out:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen consistent
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({process.returncode}); see {log}")
    return {"wall_s": round(time.perf_counter() - started, 1), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2)}


def convert(source: Path, build: Path, checkpoint: Path, work: Path, converter_python: str,
            command: str) -> tuple[Path, dict]:
    """The q4_k GGUF, converted and quantized where missing, and the steps' records."""
    f16, q4k = work / F16_GGUF, work / Q4K_GGUF
    steps_file = work / STEPS_FILE
    steps = json.loads(steps_file.read_text()) if steps_file.exists() else {}
    plan = [("convert (F16)", f16, [converter_python, str(source / "models" / "convert-moss-audio-to-gguf.py"),
                                    "--input", str(checkpoint), "--output"]),
            ("crispasr-quantize q4_k", q4k, [str(build / "bin" / "crispasr-quantize"), str(f16)])]
    for step, output, argv in plan:
        if output.exists():
            steps.setdefault(step, {"wall_s": None, "peak_rss_gib": None, "command": "found in place, not timed"})
            continue
        partial = output.with_suffix(".partial")  # a crash must not leave a file that looks done
        argv = argv + [str(partial)] + (["q4_k"] if "quantize" in step else [])
        print(f"convert: {step}", flush=True)
        steps[step] = run_timed(argv, work / f"{output.stem}.log") | stamp(command) | {"argv": argv}
        partial.rename(output)
        steps_file.write_text(json.dumps(steps, indent=2))
    for step, output, _ in plan:
        steps[step]["gib"] = round(output.stat().st_size / 2**30, 3)
    return q4k, steps


# --- 2. clips ---------------------------------------------------------------------------------

def make_clip(seconds: float, directory: Path) -> tuple[Path, list[float]]:
    """A `seconds`-long WAV: the whole utterances that end by then, silence after; their ends."""
    samples, ends = build_clip(seconds)
    ends = [end for end in ends if end <= seconds]
    if not ends:
        raise SystemExit(f"no whole utterance fits in {seconds} s")
    clip = np.zeros(int(seconds * SR), np.float32)
    speech = int(ends[-1] * SR)
    clip[:speech] = samples[:speech]
    path = directory / f"speech_{seconds:g}s.wav"
    soundfile.write(path, clip, SR)
    return path, ends


# --- 3. runs ----------------------------------------------------------------------------------

def warm_page_cache(*paths: Path) -> None:
    """Read the model files once so that no run pays for the disk and all runs see the same cache."""
    for path in paths:
        for file in ([path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())):
            with open(file, "rb") as handle:
                while handle.read(1 << 24):
                    pass


def run_ours(moss_edge: Path, bundle: Path, clip: Path, threads: int, budget: int, out_dir: Path) -> dict:
    """`moss-edge transcribe` in a fresh process; the windows' finish reasons prove the budget was spent."""
    argv = [str(moss_edge), "transcribe", str(bundle), str(clip), "--device", "cpu", "--threads", str(threads),
            "--timestamps", "sentence", "--max-tokens", str(budget), "--no-loop-guard",
            "--format", "json", "--output-dir", str(out_dir), "--quiet", "--no-progress"]
    record = run_timed(argv, out_dir / f"{clip.stem}.ours-{budget}.log")
    finish = json.loads((out_dir / f"{clip.stem}.json").read_text()).get("finish_reasons", [])
    return record | {"windows": len(finish), "finish_reasons": finish}


CRISP_LINES = {  # what CrispASR's moss-audio backend writes to stderr at verbosity 1
    "slice": re.compile(r"moss_audio: processing (\d+) samples"),
    "frames": re.compile(r"moss_audio: encoder done: (\d+) frames"),
    "prompt": re.compile(r"moss_audio: (\d+) mel frames, \d+ enc tokens, (\d+) prompt tokens"),
    "first": re.compile(r"moss_audio: step 0 argmax"),
    "generated": re.compile(r"moss_audio: generated (\d+) tokens"),
    "stage": re.compile(r"moss_audio_bench: (\S+)\s+([\d.]+) ms"),
}


def crispasr_program(build: Path) -> list[str]:
    """The `crispasr` CLI where it was built; else moss_audio_run, a small driver of CrispASR's
    moss_audio library that repeats what the CLI does for this backend (see its header): the
    CLI links every backend, and some of them need ops found only in CrispASR's ggml fork."""
    cli = build / "bin" / "crispasr"
    if cli.exists():
        return [str(cli), "--backend", "moss-audio"]
    driver = build / "bin" / "moss_audio_run"
    if not driver.exists():
        raise SystemExit(f"neither {cli} nor {driver} exists")
    return [str(driver)]


def run_crispasr(program: list[str], gguf: Path, clip: Path, threads: int, out_dir: Path) -> dict:
    """CrispASR's moss-audio backend in a fresh process. Its stderr is read as it comes and each
    line timed, which gives per slice: audio frames, tokens generated, and decode seconds per token."""
    if program[-1] == "moss-audio":
        argv = program + ["-m", str(gguf), "-f", str(clip), "-t", str(threads)]
    else:
        argv = program + [str(gguf), str(clip), str(threads)]
    env = os.environ | {"CRISPASR_MOSS_AUDIO_BENCH": "1"}  # per-stage times on stderr
    slices: list[dict] = []
    log_lines: list[str] = []
    with open(out_dir / f"{clip.stem}.crispasr.stdout", "w") as out:
        started = time.perf_counter()
        # errors="replace": the backend echoes the first 100 bytes of its output, cut mid-character
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE, text=True, errors="replace", env=env)
        for line in process.stderr:
            now = time.perf_counter() - started
            log_lines.append(f"{now:9.3f} {line.rstrip()}")
            if CRISP_LINES["slice"].search(line):
                slices.append({"stages_ms": {}})
            elif not slices:
                continue
            elif match := CRISP_LINES["frames"].search(line):
                slices[-1]["audio_frames"] = int(match[1])
            elif match := CRISP_LINES["prompt"].search(line):
                slices[-1] |= {"mel_frames": int(match[1]), "prompt_tokens": int(match[2])}
            elif CRISP_LINES["first"].search(line):
                slices[-1]["first_token_s"] = now
            elif match := CRISP_LINES["generated"].search(line):
                slices[-1] |= {"tokens": int(match[1]), "done_s": now}
            elif match := CRISP_LINES["stage"].search(line):
                slices[-1]["stages_ms"][match[1]] = float(match[2])
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
    (out_dir / f"{clip.stem}.crispasr.stderr").write_text("\n".join(log_lines) + "\n")
    if process.returncode != 0 or not slices or any("tokens" not in s for s in slices):
        raise SystemExit(f"crispasr failed ({process.returncode}) on {clip}; see {out_dir}")
    for s in slices:  # the first token closes prefill; the rest are one decode step each
        s["decode_s_per_token"] = (s["done_s"] - s["first_token_s"]) / max(1, s["tokens"] - 1)
    return {"wall_s": round(wall, 1), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
            "windows": len(slices), "slices": slices,
            # fewer tokens than the budget: a stop token, or its decode aborted on non-finite logits
            "finish_reasons": ["length" if s["tokens"] >= CRISPASR_BUDGET else "stop" for s in slices]}


def at_budget(run: dict, reference_tokens: int) -> float:
    """CrispASR's wall time had each slice stopped at its share of the transcript budget:
    the measured time less the measured per-token cost of the tokens past that share."""
    share = math.ceil(reference_tokens / len(run["slices"]))
    return run["wall_s"] - sum(max(0, s["tokens"] - share) * s["decode_s_per_token"] for s in run["slices"])


def summarize(runs: list[dict], audio_s: float) -> dict:
    """Median wall time and RTF, the largest peak RSS; whether every window spent its budget."""
    wall = statistics.median(r["wall_s"] for r in runs)
    spent = all(reason == "length" for r in runs for reason in r.get("finish_reasons", ["length"]))
    return {"runs": len(runs), "wall_s": round(wall, 1), "rtf": round(wall / audio_s, 3),
            "peak_rss_gib": max(r["peak_rss_gib"] for r in runs), "windows": runs[0]["windows"],
            "budget_spent": spent}


def measure_clip(args: argparse.Namespace, moss_edge: Path, gguf: Path, seconds: float, clips: Path,
                 command: str) -> dict:
    """Every row for one clip, runs interleaved so that background drift hits all rows alike."""
    clip, ends = make_clip(seconds, clips)
    reference = reference_transcript_tokens(args.bundle, ends)
    with soundfile.SoundFile(clip) as f:
        audio_s = f.frames / f.samplerate
    samples, _ = soundfile.read(clip, dtype="float32")
    windows = len(plan_windows(samples, 30.0))
    budget = math.ceil(reference / windows)
    raw: dict[str, list[dict]] = {"ours_transcript": [], "ours_512": [], "crispasr_512": []}
    for run in range(args.runs):
        print(f"{seconds:g} s clip, run {run + 1}/{args.runs}", flush=True)
        raw["ours_transcript"].append(run_ours(moss_edge, args.bundle, clip, args.threads, budget, clips))
        raw["ours_512"].append(run_ours(moss_edge, args.bundle, clip, args.threads, CRISPASR_BUDGET, clips))
        raw["crispasr_512"].append(run_crispasr(crispasr_program(args.crispasr_build), gguf, clip,
                                                args.threads, clips))
    crisp = raw["crispasr_512"]
    estimated = statistics.median(at_budget(r, reference) for r in crisp)
    first_slice = crisp[0]["slices"][0]
    rows = {
        "ours_transcript": summarize(raw["ours_transcript"], audio_s) | {"tokens_per_window": budget},
        "ours_512": summarize(raw["ours_512"], audio_s) | {"tokens_per_window": CRISPASR_BUDGET},
        "crispasr_512": summarize(crisp, audio_s) | {
            "tokens_per_window": [s["tokens"] for s in crisp[0]["slices"]],
            "audio_frames_per_window": [s.get("audio_frames") for s in crisp[0]["slices"]],
            "mel_frames_per_window": [s.get("mel_frames") for s in crisp[0]["slices"]],
            "prompt_tokens_per_window": [s.get("prompt_tokens") for s in crisp[0]["slices"]],
            "decode_s_per_token": round(statistics.median(
                s["decode_s_per_token"] for r in crisp for s in r["slices"]), 4),
            "stages_ms_first_window": first_slice["stages_ms"]},
        "crispasr_transcript_estimated": {
            "runs": len(crisp), "wall_s": round(estimated, 1), "rtf": round(estimated / audio_s, 3),
            "peak_rss_gib": None, "windows": len(crisp[0]["slices"]),
            "tokens_per_window": math.ceil(reference / len(crisp[0]["slices"]))},
    }
    for row in rows.values():
        row |= stamp(command)
    return {"audio_s": round(audio_s, 2), "utterances": len(ends), "reference_tokens": reference,
            "rows": rows, "raw": raw}


# --- report -----------------------------------------------------------------------------------

ROW_LABELS = {
    "ours_transcript": "moss-edge (ONNX int4 encoder + llama.cpp Q4_K_M)",
    "ours_512": "moss-edge, CrispASR's budget",
    "crispasr_512": "CrispASR (ggml, F16 encoder + q4_k LLM)",
    "crispasr_transcript_estimated": "CrispASR at the transcript budget (estimate)",
}


def markdown(result: dict) -> list[str]:
    lines = ["# MOSS-Audio-4B: this runtime and CrispASR side by side", "",
             f"Random-weight MOSS-Audio-4B checkpoint, CPU only, {result['threads']} threads, the same clips; "
             f"a fresh process per run, wall time from start to exit (loading included); medians of "
             f"{result['runs']} runs, the largest peak RSS. RTF = wall / audio seconds.", "",
             provenance(result), "",
             f"CrispASR {result['crispasr']['version']} ({result['crispasr']['source']}), run as "
             f"`{' '.join(result['crispasr']['program'])}`, GGUF "
             f"{result['crispasr']['gguf_gib']} GiB; onnxruntime {result['versions']['onnxruntime']}, "
             f"llama-cpp-python {result['versions']['llama_cpp_python']}; llama.cpp: "
             f"`{result['versions']['llama_system_info']}`", "",
             f"1-minute load average at the start and end: {result['load_average_1min']['start']} / "
             f"{result['load_average_1min']['end']}.", "",
             "Token budgets: random weights never emit the stop token, so each window decodes its whole "
             "budget. moss-edge gets the clip's true-transcript length with sentence timestamps, split over "
             f"its windows (`--max-tokens`), and CrispASR's budget. CrispASR decodes {CRISPASR_BUDGET} tokens per "
             "30 s slice whatever it is told (hard-coded in its src/moss_audio.cpp; `-n` is not read by the "
             "moss-audio backend); the estimate row subtracts, per slice, its own measured per-token decode "
             "time for the tokens past the transcript budget. CrispASR pads every slice's mel to 30 s (3000 "
             "frames) and encodes and prefills the padding: its mel frames and prompt tokens columns. Windows: "
             "moss-edge cuts at quiet points into windows of at most 30 s; CrispASR's CLI cuts 30 s slices at "
             "the quietest 100 ms of their last 5 s and, when there are several, widens each by 3 s of "
             "audio on both sides.", "",
             "## Conversion with CrispASR's tools", "",
             "Peak RSS is the child's ru_maxrss, which counts the checkpoint pages the converter maps.", "",
             "| step | wall s | peak RSS GiB | output GiB | machine | date | command |", "|---|---|---|---|---|---|---|"]
    for step, record in result["conversion"].items():
        lines.append(f"| {step} | {record['wall_s']} | {record['peak_rss_gib']} | {record.get('gib')} | "
                     f"{record.get('machine', '')} | {record.get('date', '')} | `{record['command']}` |")
    for seconds, clip in result["clips"].items():
        lines += ["", f"## {seconds} s clip: {clip['utterances']} utterances, true transcript "
                      f"{clip['reference_tokens']} tokens", "",
                  "| runtime | windows x tokens | wall s | RTF | peak RSS GiB | CrispASR mel frames / window | "
                  "CrispASR prompt tokens / window | CrispASR decode s/token | machine | date | command |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for key, row in clip["rows"].items():
            tokens = row["tokens_per_window"]
            shown = "+".join(map(str, tokens)) if isinstance(tokens, list) else f"{row['windows']} x {tokens}"
            if not row.get("budget_spent", True):
                shown += " (a window stopped early)"
            frames, prompt = row.get("mel_frames_per_window"), row.get("prompt_tokens_per_window")
            lines.append(f"| {ROW_LABELS[key]} | {shown} | {row['wall_s']} | {row['rtf']} | "
                         f"{row['peak_rss_gib'] if row['peak_rss_gib'] is not None else 'n/a'} | "
                         f"{'+'.join(map(str, frames)) if frames else ''} | "
                         f"{'+'.join(map(str, prompt)) if prompt else ''} | {row.get('decode_s_per_token', '')} | "
                         f"{row['machine']} | {row['date']} | `{row['command']}` |")
    if result["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in result["notes"]]
    return lines


def cmake_cache_value(build: Path, key: str) -> str:
    for line in (build / "CMakeCache.txt").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return line.split("=", 1)[1]
    raise SystemExit(f"{key} not in {build / 'CMakeCache.txt'}: is {build} a CMake build of CrispASR?")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crispasr-build", type=Path, required=True, help="CMake build dir with bin/crispasr")
    parser.add_argument("--checkpoint", type=Path, required=True, help="the random-weight 4B checkpoint")
    parser.add_argument("--bundle", type=Path, help="our int4-Q4_K_M bundle of that checkpoint")
    parser.add_argument("--work-dir", type=Path, required=True, help="converted GGUFs, clips, logs")
    parser.add_argument("--converter-python", default=sys.executable,
                        help="python with torch, gguf, safetensors, transformers for CrispASR's converter")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clips", default="5,30,60", help="clip lengths in seconds")
    parser.add_argument("--convert-only", action="store_true",
                        help="only step 1, e.g. while the machine is not quiet enough to measure")
    parser.add_argument("--note", action="append", default=[], help="a line for the report's notes, repeatable")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not args.convert_only and args.bundle is None:
        parser.error("--bundle is required unless --convert-only")
    return args


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()[0]  # evidence of a quiet machine: ~0 when nothing else runs
    command = "python benchmarks/crispasr_compare.py " + " ".join(sys.argv[1:])
    source = Path(cmake_cache_value(args.crispasr_build, "CMAKE_HOME_DIRECTORY"))
    moss_edge = Path(sys.executable).parent / "moss-edge"
    args.work_dir.mkdir(parents=True, exist_ok=True)
    gguf, conversion = convert(source, args.crispasr_build, args.checkpoint, args.work_dir,
                               args.converter_python, command)
    if args.convert_only:
        print(json.dumps(conversion, indent=2))
        return
    clips_dir = args.work_dir / "clips"
    clips_dir.mkdir(exist_ok=True)
    warm_page_cache(gguf, args.bundle)
    clips = {}
    for seconds in (float(s) for s in args.clips.split(",")):
        clips[f"{seconds:g}"] = measure_clip(args, moss_edge, gguf, seconds, clips_dir, command)
    version = (source / "VERSION").read_text().strip() if (source / "VERSION").exists() else None
    result = {
        **stamp(command),
        "threads": args.threads, "runs": args.runs,
        "versions": {"onnxruntime": onnxruntime.__version__, "llama_cpp_python": llama_cpp.__version__,
                     "llama_system_info": llama_cpp.llama_print_system_info().decode().strip()},
        "load_average_1min": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
        "crispasr": {"version": version, "source": str(source), "build": str(args.crispasr_build),
                     "program": crispasr_program(args.crispasr_build),
                     "gguf": str(gguf), "gguf_gib": round(gguf.stat().st_size / 2**30, 3)},
        "bundle": str(args.bundle), "checkpoint": str(args.checkpoint),
        "conversion": conversion, "clips": clips, "notes": args.note,
    }
    write_results(NAME, result, markdown(result), args.results_dir)
    print((args.results_dir / f"{NAME}.md").read_text())


if __name__ == "__main__":
    main()
