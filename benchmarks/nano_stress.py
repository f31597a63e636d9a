"""The embedded nano bundle on the stress set: speech outside everything training used.

The clips come from export/nano/stress.py (its own seed and grammar: free digit strings with
repeats, speeds and pitches outside training's, every voice variant training never used, a
quiet level over a noise floor, 2-4 sentences a clip). They are scored through the runtime
with export/nano/quality.py, exactly as nano_quality.py scores the held-out set, whose figures
for the same bundle (from results/nano_quality.json) are quoted beside these. Breakdowns by
each stress dimension, and the worst clips with what the model wrote, show where it fails.

    python benchmarks/nano_stress.py [--bundle DIR] [--clips 120]

Writes benchmarks/results/nano_stress.{json,md}. Needs espeak-ng.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Sequence

from edge_runtime.bundle import EMBEDDED_BUNDLES
from edge_runtime.features import SAMPLE_RATE
from edge_runtime.prompt import TRANSCRIBE
from edge_runtime.transcribe import MossAudio
from moss_audio_edge.export.nano.corpus import word_errors, words
from moss_audio_edge.export.nano.quality import MAX_TOKENS, ClipScore, score_clip, summarize
from moss_audio_edge.export.nano.stress import STRESS_SEED, Labels, StressClip, stress_clips
from nano_quality import EMBEDDED_NAME
from results_file import RESULTS, provenance, stamp, write_results  # benchmarks/ is the script's directory

GROUP_FIELDS = ("clips", "words", "wer", "timestamp_text_wer", "timestamp_mae_ms", "sentences_matched")
WORST = 10


def by_label(clips: Sequence[StressClip], scores: Sequence[ClipScore], field: str) -> dict[str, dict[str, float]]:
    """summarize() of the clips sharing each value of one label (nano_voice_gap's breakdown
    keeps only WER; the timestamp figures are wanted per dimension too)."""
    groups: dict[str, list[ClipScore]] = {}
    for clip, score in zip(clips, scores):
        groups.setdefault(getattr(clip.labels, field), []).append(score)
    return {value: {k: summarize(group)[k] for k in GROUP_FIELDS} for value, group in sorted(groups.items())}


def worst_clips(model: MossAudio, clips: Sequence[StressClip], scores: Sequence[ClipScore]) -> list[dict]:
    """The WORST clips by WER, with what the model wrote (decoded again: greedy decoding gives
    the text score_clip scored, which `errors_match` checks)."""
    ranked = sorted(range(len(clips)), key=lambda i: -scores[i].word_errors / max(1, scores[i].reference_words))
    rows = []
    for i in ranked[:WORST]:
        clip, score = clips[i].clip, scores[i]
        reference = " | ".join(s.text for s in clip.sentences)
        hypothesis = model.generate(clip.audio, TRANSCRIBE, max_tokens=MAX_TOKENS).text
        errors = word_errors(words(reference), words(hypothesis))
        rows.append({"clip": i, **dataclasses.asdict(clips[i].labels), "speed_wpm": clip.voice.speed,
                     "pitch_value": clip.voice.pitch, "wer": score.word_errors / max(1, score.reference_words),
                     "reference": reference, "hypothesis": hypothesis,
                     "errors_match": errors == score.word_errors})
    return rows


def held_out_rows() -> tuple[dict, list[dict]]:
    """nano_quality.json's stamp and its rows for the embedded bundle, as that file has them."""
    quality = json.loads((RESULTS / "nano_quality.json").read_text())
    return quality, [r for r in quality["rows"] if r["bundle"] == EMBEDDED_NAME]


def percent(x: float) -> str:
    return f"{100 * x:.1f}%"


def cell(text: str) -> str:
    """Text that cannot break a markdown table row (the model may write anything)."""
    return " ".join(text.replace("|", "/").split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=EMBEDDED_BUNDLES["nano"])
    parser.add_argument("--clips", type=int, default=120)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    clips = stress_clips(args.clips, STRESS_SEED)
    synthesis_s = time.perf_counter() - started
    model = MossAudio(args.bundle, threads=args.threads)
    scores = [score_clip(model, c.clip) for c in clips]
    overall = summarize(scores)
    breakdowns = {field.name: by_label(clips, scores, field.name) for field in dataclasses.fields(Labels)}
    worst = worst_clips(model, clips, scores)
    quality, held_out = held_out_rows()
    audio_s = round(sum(len(c.clip.audio) for c in clips) / SAMPLE_RATE, 1)
    command = (f"python benchmarks/nano_stress.py --clips {args.clips}"
               + (f" --bundle {args.bundle}" if args.bundle != EMBEDDED_BUNDLES["nano"] else "")
               + (f" --threads {args.threads}" if args.threads else ""))
    result = {**stamp(command), "bundle": EMBEDDED_NAME if args.bundle == EMBEDDED_BUNDLES["nano"] else str(args.bundle),
              "stress_seed": STRESS_SEED, "audio_s": audio_s, "synthesis_s": round(synthesis_s, 1),
              "eval_s": round(time.perf_counter() - started - synthesis_s, 1), "stress": overall,
              "held_out": {"source": "benchmarks/results/nano_quality.json", "date": quality["date"],
                           "machine": quality["machine"], "rows": held_out},
              "by": breakdowns, "worst_clips": worst}
    print(json.dumps({"stress": overall}), flush=True)

    lines = [f"# Nano model on the stress set ({args.clips} clips)", "", provenance(result), "",
             f"Clips from `export/nano/stress.py` (seed {STRESS_SEED}, {audio_s / 60:.1f} min): free digit strings "
             "of 2-7 digits, most with a run of one repeated digit, and digit strings inside phrases training's "
             "grammar never forms; 80-90 wpm (with and without pauses between words) and 240-300 wpm; every "
             "voice variant training never used (a quarter of the clips in effect variants: robots, whispers); "
             "espeak-ng pitch 0-14 and 86-99; half the clips at -30 dBFS over a noise floor at 20 dB SNR; 2-4 "
             "sentences a clip. Scored as in [nano_quality.md](nano_quality.md): WER of plain transcription, "
             "of the timestamped answer's text, and the mean absolute error of sentence start and end times "
             "over true sentences matched to the predicted segment overlapping them most.", "",
             f"Held-out rows: the embedded bundle in `nano_quality.json` ({quality['date']}, "
             f"{quality['clips_per_set']} clips per set), quoted from that file.", "",
             "| set | clips | words | WER | WER of timestamped text | timestamp MAE ms | sentences matched | "
             "clips with times inside and ordered | worst clip: WER / MAE ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in [*((f"held-out {r['set']}", r) for r in held_out), ("**stress**", overall)]:
        lines.append(f"| {name} | {r['clips']} | {r['words']} | {percent(r['wer'])} | "
                     f"{percent(r['timestamp_text_wer'])} | {r['timestamp_mae_ms']:.0f} | "
                     f"{percent(r['sentences_matched'])} | {percent(r['clips_times_inside_and_ordered'])} | "
                     f"{percent(r['wer_worst_clip'])} / {r['timestamp_mae_ms_worst_clip']:.0f} |")
    for field, groups in breakdowns.items():
        lines += ["", f"By {field.replace('_', ' ')}:", "",
                  f"| {field.replace('_', ' ')} | clips | words | WER | WER of timestamped text | timestamp MAE ms | "
                  "sentences matched |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {value} | {g['clips']} | {g['words']} | {percent(g['wer'])} | {percent(g['timestamp_text_wer'])} "
                  f"| {g['timestamp_mae_ms']:.0f} | {percent(g['sentences_matched'])} |" for value, g in groups.items()]
    lines += ["", f"The {WORST} clips with the highest WER (plain transcription; reference sentences split by |):", "",
              "| clip | voice | rate | wpm | pitch | level | WER | reference | hypothesis |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {w['clip']} | {w['accent']}+{w['variant']} | {w['rate']} | {w['speed_wpm']} | {w['pitch_value']} | {w['level']} | "
              f"{percent(w['wer'])} | {w['reference']} | {cell(w['hypothesis'])} |" for w in worst]
    write_results("nano_stress", result, lines)


if __name__ == "__main__":
    main()
