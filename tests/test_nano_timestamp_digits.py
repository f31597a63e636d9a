"""benchmarks/nano_timestamp_digits.py: every digit of an answer's timestamps is counted in
its place, with the real tokenizer's pieces."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from nano_quality import EVAL_SEED  # noqa: E402
from nano_timestamp_digits import score_weights, token_roles  # noqa: E402

from export.nano.corpus import held_out_clips  # noqa: E402
from export.nano.weights import WEIGHTS_FILE  # noqa: E402


def test_digits_are_placed_by_the_point_and_the_brackets():
    pieces = ["[", "1", "2", ".", "0", "7", "][", "1", "3", ".", "5", "0", "]", "dial", " two", "[", "9", ".", "9", "9", "]"]
    assert token_roles(pieces) == [
        "other", "seconds", "seconds", "other", "tenths", "hundredths", "other", "seconds", "seconds", "other",
        "tenths", "hundredths", "other", "other", "other", "other", "seconds", "other", "tenths", "hundredths", "other"]


def test_every_timestamp_of_a_held_out_clip_is_scored(tmp_path: Path):
    clip = held_out_clips(1, EVAL_SEED)[0]
    scores = score_weights(WEIGHTS_FILE, [clip], tmp_path)
    timestamps = 2 * len(clip.sentences)
    assert scores["tenths"]["tokens"] == scores["hundredths"]["tokens"] == timestamps
    assert timestamps <= scores["seconds"]["tokens"] <= 2 * timestamps
    assert all(s["cross_entropy"] >= 0 and 0 <= s["top1"] <= 1 for s in scores.values())
