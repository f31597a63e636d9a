"""benchmarks/nano_timestamp_digits.py: every digit of an answer's timestamps is counted in
its place, with the real tokenizer's pieces."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from nano_quality import EVAL_SEED  # noqa: E402
from nano_timestamp_digits import circular_digit_distance, score_weights, token_boundaries, token_roles  # noqa: E402

from moss_audio_edge.export.nano.corpus import held_out_clips  # noqa: E402
from moss_audio_edge.export.nano.weights import WEIGHTS_FILE  # noqa: E402


def test_digits_are_placed_by_the_point_and_the_brackets():
    pieces = ["[", "1", "2", ".", "0", "7", "][", "1", "3", ".", "5", "0", "]", "dial", " two", "[", "9", ".", "9", "9", "]"]
    assert token_roles(pieces) == [
        "other", "seconds", "seconds", "other", "tenths", "hundredths", "other", "seconds", "seconds", "other",
        "tenths", "hundredths", "other", "other", "other", "other", "seconds", "other", "tenths", "hundredths", "other"]


def test_timestamps_alternate_between_a_start_and_an_end():
    pieces = ["[", "1", ".", "0", "7", "][", "1", ".", "5", "0", "]", "dial", "[", "9", ".", "9", "9", "]", "stop"]
    assert token_boundaries(pieces) == [
        None, "start", "start", "start", "start", "start", "end", "end", "end", "end", "end", None,
        None, "start", "start", "start", "start", "start", None]


def test_tenths_within_one_wrap_around_the_circle():
    assert [circular_digit_distance(a, b) for a, b in [(3, 3), (3, 4), (0, 9), (9, 0), (2, 7), (1, 8)]] == [
        0, 1, 1, 1, 5, 3]


def test_every_timestamp_of_a_held_out_clip_is_scored(tmp_path: Path):
    clip = held_out_clips(1, EVAL_SEED)[0]
    scores = score_weights(WEIGHTS_FILE, [clip], tmp_path)
    timestamps = 2 * len(clip.sentences)
    assert scores["tenths"]["tokens"] == scores["hundredths"]["tokens"] == timestamps
    assert timestamps <= scores["seconds"]["tokens"] <= 2 * timestamps
    assert scores["tenths_start"]["tokens"] == scores["tenths_end"]["tokens"] == len(clip.sentences)
    assert all(s["cross_entropy"] >= 0 and 0 <= s["top1"] <= 1 for r, s in scores.items() if not r.startswith("tenths_"))
    assert all(0 <= s["exact"] <= s["within_one"] <= 1 for r, s in scores.items() if r.startswith("tenths_"))
