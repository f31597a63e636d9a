"""How well the nano model knows each digit of the timestamps it writes, per set of weights.

Teacher-forced through the PyTorch reference on the benchmark's held-out clean clips with the
sentence-timestamp prompt: the cross-entropy and top-1 accuracy of every answer token, grouped
as the whole seconds of a timestamp, its tenths, its hundredths, and everything else (words,
brackets, the stop token). A digit the model cannot place scores ln 10 = 2.30 nats (chance).
The tenths are also split by the boundary they belong to, a sentence's start or its end, and
counted within one tenth as well (the likeliest digit at most one away, around the circle:
chance 30%), since a start and an end are found from different evidence.

    python benchmarks/nano_timestamp_digits.py --weights shipped=export/nano/nano-weights.safetensors \
        [--weights earlier=OTHER.safetensors] --clips 80

Writes benchmarks/results/nano_timestamp_digits.{json,md}. Needs espeak-ng and the export extra.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from edge_runtime import features
from edge_runtime.prompt import SENTENCE_TIMESTAMPS
from moss_audio_edge.export.checkpoint import Checkpoint
from moss_audio_edge.export.nano.corpus import Clip, held_out_clips
from moss_audio_edge.export.nano.train import IM_END, NANO_CONFIG
from moss_audio_edge.export.nano.weights import WEIGHTS_FILE, write_nano_checkpoint
from moss_audio_edge.export.reference import MossAudioReference, prompt_ids
from nano_quality import EVAL_SEED
from results_file import provenance, stamp, write_results  # benchmarks/ is the script's directory

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("seconds", "tenths", "hundredths", "other")
BOUNDARIES = ("start", "end")


def token_places(pieces: list[str]) -> list[tuple[str, str | None]]:
    """(role, boundary) of each answer token, from the decoded pieces. Role: a single digit
    inside a marker is seconds before its '.', then tenths, then hundredths; anything else is
    other. Boundary: for a token inside a marker, whether that marker is a sentence's start or
    its end (they alternate: [start]text[end]); None outside markers."""
    places: list[tuple[str, str | None]] = []
    in_marker, after_point, markers_opened = False, 0, 0
    for piece in pieces:
        role = "other"
        if in_marker and len(piece) == 1 and piece.isdigit():
            role = ("seconds", "tenths", "hundredths")[min(after_point, 2)]
            after_point += after_point > 0
        places.append((role, BOUNDARIES[(markers_opened - 1) % 2] if in_marker else None))
        for char in piece:
            if char == "[":
                in_marker, after_point, markers_opened = True, 0, markers_opened + 1
            elif char == "]":
                in_marker = False
            elif char == "." and in_marker:
                after_point = 1
    return places


def token_roles(pieces: list[str]) -> list[str]:
    return [role for role, _ in token_places(pieces)]


def token_boundaries(pieces: list[str]) -> list[str | None]:
    return [boundary for _, boundary in token_places(pieces)]


def circular_digit_distance(a: int, b: int) -> int:
    return min((a - b) % 10, (b - a) % 10)


def score_weights(weights: Path, clips: list[Clip], work: Path) -> dict[str, dict[str, float]]:
    checkpoint_dir = write_nano_checkpoint(NANO_CONFIG, work / "checkpoint", weights, tokenizer_cache=work / "cache")
    checkpoint = Checkpoint(checkpoint_dir)
    model = MossAudioReference.from_checkpoint(checkpoint).float().eval()
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint_dir))
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    p = checkpoint.config.processor
    losses: dict[str, list[float]] = {r: [] for r in ROLES}
    hits: dict[str, list[bool]] = {r: [] for r in ROLES}
    digit_ids = [encode(str(d))[0] for d in range(10)]
    tenths_distance: dict[str, list[int]] = {b: [] for b in BOUNDARIES}
    with torch.no_grad():
        for clip in clips:
            rows = model.encode_audio(torch.from_numpy(features.log_mel_spectrogram(clip.audio)))
            prompt = prompt_ids(len(rows), encode, SENTENCE_TIMESTAMPS, (p.audio_token_id, p.audio_start_id, p.audio_end_id))
            answer = encode(clip.timestamped)
            ids = torch.tensor([prompt + answer + [IM_END]])
            hidden = model.hidden_states(ids, rows)[0, len(prompt) - 1: -1]
            logits = hidden @ model.output_weight().T
            targets = ids[0, len(prompt):]
            token_losses = F.cross_entropy(logits, targets, reduction="none").tolist()
            correct = (logits.argmax(-1) == targets).tolist()
            pieces = [tokenizer.decode([t]) for t in answer]
            places = token_places(pieces) + [("other", None)]  # the stop token
            for (role, _), loss, hit in zip(places, token_losses, correct):
                losses[role].append(loss)
                hits[role].append(hit)
            likeliest_digit = logits[:, digit_ids].argmax(-1).tolist()
            for i, (role, boundary) in enumerate(places):
                if role == "tenths":
                    want = digit_ids.index(answer[i])
                    tenths_distance[boundary].append(circular_digit_distance(likeliest_digit[i], want))
    scores = {r: {"tokens": len(losses[r]), "cross_entropy": float(np.mean(losses[r])),
                  "top1": float(np.mean(hits[r]))} for r in ROLES}
    for b, distances in tenths_distance.items():
        scores[f"tenths_{b}"] = {"tokens": len(distances), "exact": float(np.mean([d == 0 for d in distances])),
                                 "within_one": float(np.mean([d <= 1 for d in distances]))}
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", action="append", default=None, metavar="NAME=PATH",
                        help=f"compact nano weights to score (repeatable; default: shipped={WEIGHTS_FILE})")
    parser.add_argument("--clips", type=int, default=80)
    args = parser.parse_args()
    named = [w.split("=", 1) for w in args.weights] if args.weights else [["shipped", str(WEIGHTS_FILE.relative_to(ROOT))]]
    clips = held_out_clips(args.clips, EVAL_SEED)
    rows = []
    for name, path in named:
        with tempfile.TemporaryDirectory() as scratch:
            rows.append({"weights": name, "path": path, **score_weights(ROOT / path, clips, Path(scratch))})
        print(json.dumps(rows[-1]), flush=True)
    command = (f"python benchmarks/nano_timestamp_digits.py --clips {args.clips}"
               + "".join(f" --weights '{name}={path}'" for name, path in named if args.weights))
    result = {**stamp(command), "clips": args.clips, "eval_seed": EVAL_SEED, "chance_nats": math.log(10),
              "rows": rows}
    lines = [f"# Nano model: how well it knows each digit of its timestamps ({args.clips} held-out clean clips)", "",
             provenance(result), "",
             "Teacher-forced answers to the sentence-timestamp prompt through the PyTorch reference: mean "
             "cross-entropy (nats) and top-1 accuracy of each kind of answer token. Chance for a digit: "
             f"{math.log(10):.2f} nats, 10%.", "",
             "| weights | " + " | ".join(ROLES) + " |", "|---|" + "---|" * len(ROLES)]
    for row in rows:
        cells = [f"{row[r]['cross_entropy']:.2f} nats, {100 * row[r]['top1']:.0f}% ({row[r]['tokens']})" for r in ROLES]
        lines.append(f"| {row['weights']} | " + " | ".join(cells) + " |")
    lines += ["", "The tenths by boundary: the likeliest digit exact (chance 10%) and at most one tenth away "
              "(chance 30%).", "", "| weights | " + " | ".join(f"{b}s exact | {b}s within one" for b in BOUNDARIES)
              + " |", "|---|" + "---|" * 2 * len(BOUNDARIES)]
    for row in rows:
        cells = [f"{100 * row[f'tenths_{b}'][k]:.0f}% ({row[f'tenths_{b}']['tokens']})"
                 for b in BOUNDARIES for k in ("exact", "within_one")]
        lines.append(f"| {row['weights']} | " + " | ".join(cells) + " |")
    write_results("nano_timestamp_digits", result, lines)


if __name__ == "__main__":
    main()
