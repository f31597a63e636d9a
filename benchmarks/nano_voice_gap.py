"""Does the nano model miss words because the voices are new to it? The same bundle on held-out
voices and on the voices it was trained on.

Two sets of clean clips of up to 20 s, drawn alike: the held-out set of
benchmarks/nano_quality.py (voice variants and speeds never used in training, same seed) and a
set in the voice variants and speeds training uses (export/nano/corpus.py), each with new
random voice settings and sentences synthesised afresh. If the training voices score about as
badly, the errors come from what the model has learned at all, not from unheard voices.
Both are run through the runtime, with a breakdown by accent and speaking speed.

    python benchmarks/nano_voice_gap.py [--bundle DIR] [--clips 80]

Writes benchmarks/results/nano_voice_gap.{json,md}. Needs espeak-ng.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge_runtime.bundle import EMBEDDED_BUNDLES
from edge_runtime.transcribe import MossAudio
from moss_audio_edge.export.nano.corpus import TRAIN_SPEEDS, Clip, evaluation_clips, held_out_clips, split_variants
from moss_audio_edge.export.nano.quality import ClipScore, score_clip, summarize
from nano_quality import EVAL_SEED
from results_file import provenance, stamp, write_results  # benchmarks/ is the script's directory

SETS = ("held-out voices", "training voices")


def breakdown(clips: list[Clip], scores: list[ClipScore], key) -> dict[str, dict[str, float]]:
    """Word errors and WER per value of `key(clip)`."""
    groups: dict[str, list[ClipScore]] = {}
    for clip, score in zip(clips, scores):
        groups.setdefault(str(key(clip)), []).append(score)
    return {name: {k: summarize(group)[k] for k in ("words", "wer")} for name, group in sorted(groups.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=EMBEDDED_BUNDLES["nano"])
    parser.add_argument("--clips", type=int, default=80, help="clips per set")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    clip_sets = {SETS[0]: held_out_clips(args.clips, EVAL_SEED),
                 SETS[1]: evaluation_clips(args.clips, EVAL_SEED, split_variants().train_variants, TRAIN_SPEEDS)}
    model = MossAudio(args.bundle, threads=args.threads)
    rows = []
    for name, clips in clip_sets.items():
        scores = [score_clip(model, clip) for clip in clips]
        rows.append({"set": name, **summarize(scores),
                     "by_accent": breakdown(clips, scores, lambda c: c.voice.accent),
                     "by_speed_wpm": breakdown(clips, scores, lambda c: c.voice.speed)})
        print(json.dumps({k: v for k, v in rows[-1].items() if not k.startswith("by_")}), flush=True)
    command = f"python benchmarks/nano_voice_gap.py --bundle {args.bundle} --clips {args.clips}"
    result = {**stamp(command), "clips_per_set": args.clips, "eval_seed": EVAL_SEED, "rows": rows}
    lines = [f"# Nano model: held-out voices against training voices ({args.clips} clean clips per set)", "",
             provenance(result), "",
             "Held-out voices: voice variants and speeds never used in training (the clean set of "
             "nano_quality.md). Training voices: the variants and speeds training uses, with new random voice "
             "settings and sentences. WER: plain transcription; timestamp MAE: sentence start and end times.", "",
             "| set | words | WER | WER of timestamped text | timestamp MAE ms | worst clip WER |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['set']} | {r['words']} | {100 * r['wer']:.1f}% | {100 * r['timestamp_text_wer']:.1f}% | "
                     f"{r['timestamp_mae_ms']:.0f} | {100 * r['wer_worst_clip']:.0f}% |")
    for title, field in (("accent", "by_accent"), ("speaking speed, words per minute", "by_speed_wpm")):
        lines += ["", f"WER by {title} (reference words):", "", "| set | value | WER |", "|---|---|---|"]
        for r in rows:
            lines += [f"| {r['set']} | {value} | {100 * g['wer']:.1f}% ({g['words']}) |" for value, g in r[field].items()]
    write_results("nano_voice_gap", result, lines)


if __name__ == "__main__":
    main()
