"""Word error rate and sentence-timestamp error of the nano model, per quantization choice.

Held-out clips only: voice variants and speaking speeds that training never used (see
export/nano/corpus.py), clean, and (for the float and the shipped bundle) with training's
noise/echo/gain augmentation. Each choice
is quantized from the float bundle with `quantize_bundle` and run through the runtime; the
embedded bundle is measured too (it is the shipped recipe's output, see export/nano/release.py).

    python benchmarks/nano_quality.py --float-bundle WORK/bundle-f16 --clips 80

Writes benchmarks/results/nano_quality.{json,md}. Needs espeak-ng and the quantize extra.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from edge_runtime.bundle import EMBEDDED_BUNDLES, load_bundle
from edge_runtime.features import SAMPLE_RATE
from moss_audio_edge.export.nano.corpus import held_out_clips
from moss_audio_edge.export.nano.quality import evaluate
from moss_audio_edge.quantize.bundle_quant import quantize_bundle
from results_file import provenance, stamp, write_results  # benchmarks/ is the script's directory

FLOAT_NAME = "fp32 + F16 (float)"
# name -> quantize_bundle options, quantized from the float bundle here (each also runs the
# fidelity report, minutes on 2 cores); the shipped recipe is measured as the embedded bundle.
CHOICES: dict[str, dict[str, str]] = {
    "int8 + F16": {"encoder": "int8", "llm": "F16", "int8_layout": "avx2"},
    "int4 + F16": {"encoder": "int4", "llm": "F16"},
    "fp32 + Q8_0": {"encoder": "fp32", "llm": "Q8_0"},
    # the shipped recipe with a smaller embedding (1.2 MB less)
    "int8 + Q8_0 (embedding Q5_0)": {"encoder": "int8", "llm": "Q8_0", "embedding_type": "Q5_0", "int8_layout": "avx2"},
    "fp32 + Q4_0 (embedding Q4_0)": {"encoder": "fp32", "llm": "Q4_0", "embedding_type": "Q4_0"},
    "int4 + Q4_0 (embedding Q4_0)": {"encoder": "int4", "llm": "Q4_0", "embedding_type": "Q4_0"},
}
EVAL_SEED = 20261126
EMBEDDED_NAME = "embedded `nano` bundle"
NOISY_TOO = (FLOAT_NAME, EMBEDDED_NAME)  # the noisy set for the float model and what ships


def bundle_megabytes(directory: Path) -> float:
    bundle = load_bundle(directory)
    names = [bundle.manifest.encoder.path, *bundle.manifest.encoder.extra_files, bundle.manifest.llm.path,
             "manifest.json"]
    return sum((directory / n).stat().st_size for n in names) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--float-bundle", type=Path, required=True, help="the exported F32/F16 nano bundle")
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--choice", action="append", choices=list(CHOICES), default=None,
                        help="a quantization to measure besides the float and the shipped bundle "
                             "(repeatable; default: every choice)")
    parser.add_argument("--out", default="nano_quality")
    args = parser.parse_args()
    args.choice = args.choice or list(CHOICES)
    sets = {"clean": held_out_clips(args.clips, EVAL_SEED),
            "noisy": held_out_clips(args.clips, EVAL_SEED + 1, augment=True)}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        candidates = [(FLOAT_NAME, args.float_bundle), (EMBEDDED_NAME, EMBEDDED_BUNDLES["nano"])]
        for name in args.choice:
            out = Path(scratch) / f"choice-{len(candidates)}"
            quantize_bundle(args.float_bundle, out, threads=args.threads, log=lambda _: None, **CHOICES[name])
            candidates.append((name, out))
        for name, path in candidates:
            for set_name, clips in sets.items():
                if set_name == "noisy" and name not in NOISY_TOO:
                    continue
                started = time.perf_counter()
                row = {"bundle": name, "set": set_name, "size_mb": round(bundle_megabytes(path), 2),
                       **evaluate(path, clips, threads=args.threads)}
                row["eval_s"] = round(time.perf_counter() - started, 1)
                rows.append(row)
                print(json.dumps(row), flush=True)
    audio_s = {name: round(sum(len(c.audio) for c in clips) / SAMPLE_RATE, 1) for name, clips in sets.items()}
    result = {
        **stamp(f"python benchmarks/nano_quality.py --float-bundle {args.float_bundle} --clips {args.clips}"
                + "".join(f" --choice '{c}'" for c in args.choice)
                + (f" --threads {args.threads}" if args.threads else "")),
        "clips_per_set": args.clips, "audio_s": audio_s, "eval_seed": EVAL_SEED, "rows": rows,
    }
    lines = [f"# Nano model quality on held-out voices and speeds ({args.clips} clips per set)", "",
             provenance(result), "",
             f"Clips: voice variants and speeds never used in training; *clean* ({audio_s['clean'] / 60:.1f} min) "
             f"as synthesised, *noisy* ({audio_s['noisy'] / 60:.1f} min) with training's noise (5-40 dB SNR), "
             "room echo and gain. WER: plain transcription (`Transcribe the audio.`). Timestamp MAE: mean "
             "absolute error of sentence start and end times with the maintainers' sentence-timestamp "
             "prompt, over true sentences matched to the predicted segment that overlaps them most; "
             "matched: the share of true sentences with such a segment. Worst clip: the highest WER and "
             "timestamp MAE of a single clip in the set.", "",
             "| bundle | clips | size MB | WER | WER of timestamped text | timestamp MAE ms | sentences matched | "
             "clips with times inside and ordered | worst clip: WER / MAE ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['bundle']} | {r['set']} | {r['size_mb']} | {100 * r['wer']:.1f}% | "
                     f"{100 * r['timestamp_text_wer']:.1f}% | {r['timestamp_mae_ms']:.0f} | "
                     f"{100 * r['sentences_matched']:.1f}% | {100 * r['clips_times_inside_and_ordered']:.0f}% | "
                     f"{100 * r['wer_worst_clip']:.0f}% / {r['timestamp_mae_ms_worst_clip']:.0f} |")
    write_results(args.out, result, lines)


if __name__ == "__main__":
    main()
