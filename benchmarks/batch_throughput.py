"""Batch throughput: `moss-edge batch` on a local Ray instance with 1 and 2 workers, and what the
batch path costs per file against plain `moss-edge transcribe`, on the same files.

`--files` espeak-ng clips (3 to 5 spoken commands each, different speeds) are transcribed by the
real CLI, each command run on the first file alone and on all of them, interleaved over
`--runs` rounds (medians). Fixed costs (process start, Ray start, model loads) cancel in the
slope `(wall(all) - wall(one)) / (files - 1)`, the marginal seconds per file: the throughput
ratio is 1 worker's slope over 2 workers', the per-file overhead is the batch slope minus
transcribe's, and the fixed overhead is the difference of the intercepts. Every run writes
JSON transcripts; the batch's must equal transcribe's byte for byte.

    python benchmarks/batch_throughput.py
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_file import RESULTS, provenance, stamp, write_results  # benchmarks/ is the script's directory

from edge_runtime.audio import load_audio
from edge_runtime.features import SAMPLE_RATE
from edge_runtime.speech import SAMPLE_TEXT, speak

MOSS_EDGE = Path(sys.executable).with_name("moss-edge")
SENTENCES = [s.strip() for s in re.split(r"(?<=[.?])\s", SAMPLE_TEXT) if s.strip()]


def make_clips(folder: Path, count: int) -> list[Path]:
    clips = []
    for i in range(count):
        first = i % len(SENTENCES)
        text = " ".join((SENTENCES * 2)[first:first + 3 + i % 3])
        clips.append(speak(text, folder / f"clip{i:02d}.wav", words_per_minute=140 + 5 * (i % 5)))
    return clips


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr}")
    return time.perf_counter() - started


def commands(setting: str, files: list[Path], out: Path, bundle: str) -> list[str]:
    if setting == "transcribe":
        return [str(MOSS_EDGE), "transcribe", bundle, *map(str, files), "--format", "json", "--output-dir", str(out),
                "--quiet", "--threads", "1"]
    workers = setting.split()[1]
    return [str(MOSS_EDGE), "batch", bundle, *map(str, files), "--format", "json", "--output-dir", str(out),
            "--workers", workers, "--threads-per-worker", "1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="nano")
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    settings = ["transcribe", "batch 1", "batch 2"]
    walls: dict[tuple[str, int], list[float]] = {(s, n): [] for s in settings for n in (1, args.files)}
    load = [os.getloadavg()[0]]  # other work on the machine makes the walls noisy: recorded
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clips = make_clips(root, args.files)
        audio_s = sum(len(load_audio(c)) for c in clips) / SAMPLE_RATE
        for round_ in range(args.runs):
            order = [(s, n) for s in settings for n in (1, args.files)]
            for setting, n in order if round_ % 2 == 0 else reversed(order):  # neither always goes first
                out = root / f"out-{round_}-{setting.replace(' ', '')}-{n}"
                walls[setting, n].append(timed(commands(setting, clips[:n], out, args.bundle)))
        reference = root / f"out-0-transcribe-{args.files}"
        identical = all((root / f"out-{r}-{s.replace(' ', '')}-{args.files}" / c.with_suffix(".json").name).read_bytes()
                        == (reference / c.with_suffix(".json").name).read_bytes()
                        for r in range(args.runs) for s in settings[1:] for c in clips)
    load.append(os.getloadavg()[0])
    median = {key: statistics.median(values) for key, values in walls.items()}
    slope = {s: (median[s, args.files] - median[s, 1]) / (args.files - 1) for s in settings}
    intercept = {s: median[s, 1] - slope[s] for s in settings}
    rows = {s: {"wall_1_file_s": round(median[s, 1], 2), f"wall_{args.files}_files_s": round(median[s, args.files], 2),
                "marginal_s_per_file": round(slope[s], 3), "fixed_s": round(intercept[s], 2),
                "marginal_audio_s_per_s": round(audio_s / args.files / slope[s], 1)} for s in settings}
    result = {**stamp("python benchmarks/batch_throughput.py " + " ".join(sys.argv[1:])), "bundle": args.bundle,
              "files": args.files, "audio_s": round(audio_s, 1), "runs": args.runs, "settings": rows,
              "throughput_ratio_2_vs_1_workers": round(slope["batch 1"] / slope["batch 2"], 2),
              "batch_overhead_s_per_file": round(slope["batch 1"] - slope["transcribe"], 3),
              "batch_fixed_overhead_s": round(intercept["batch 1"] - intercept["transcribe"], 2),
              "outputs_identical_to_transcribe": identical,
              "load_average_start_end": [round(x, 2) for x in load]}
    shared = max(load) > 0.75 * os.cpu_count()
    lines = ["# Batch throughput", "", provenance(result), "",
             f"{args.bundle} bundle, {args.files} espeak-ng clips ({result['audio_s']} s of audio), JSON transcripts, "
             f"1 thread per model; each command on the first clip and on all {args.files}, medians of {args.runs} "
             f"interleaved runs. Load average {load[0]:.1f} at the start and {load[1]:.1f} at the end on "
             f"{os.cpu_count()} cores" + (": the machine was shared with other work, so the walls are noisy; the "
                                          "ratios come from the same run." if shared else "."), "",
             f"| command | wall, 1 file (s) | wall, {args.files} files (s) | marginal s per file | fixed s | "
             "marginal audio s per s |", "|---|---|---|---|---|---|"]
    lines += [f"| {s} | {r['wall_1_file_s']} | {r[f'wall_{args.files}_files_s']} | {r['marginal_s_per_file']} | "
              f"{r['fixed_s']} | {r['marginal_audio_s_per_s']} |" for s, r in rows.items()]
    lines += ["", f"- throughput, 2 workers vs 1 (marginal): **{result['throughput_ratio_2_vs_1_workers']}x**",
              f"- batch overhead per file vs `transcribe` (marginal): {result['batch_overhead_s_per_file']} s",
              f"- batch fixed overhead vs `transcribe` (Ray start, worker start): {result['batch_fixed_overhead_s']} s",
              f"- batch transcripts identical to `transcribe`'s: {identical}"]
    if result["batch_overhead_s_per_file"] <= 0:
        lines += ["", "A per-file overhead at or below zero: the batch path's cost per file was not measurable "
                  "above this run's noise; what it costs is the fixed start."]
    write_results("batch_throughput", result, lines, args.results_dir)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
