"""The timestamp parser on what the model writes: well-formed and malformed outputs.

It must never raise, never make a time up, and keep every piece of text (untimed if need be).
"""
from __future__ import annotations

import random

import pytest

from edge_runtime.timestamps import (
    Segment, Word, join_text, parse_output, parse_sentences, parse_timed_text, parse_words, shift)


def spans(segments: list[Segment]) -> list[tuple]:
    return [(s.start, s.end, s.text) for s in segments]


def test_the_spec_example():
    text = "[0.00]hello there[2.01][2.01]the weather is nice today[4.32]"
    assert spans(parse_sentences(text, 5.0)) == [(0.0, 2.01, "hello there"),
                                                  (2.01, 4.32, "the weather is nice today")]


@pytest.mark.parametrize("text, want", [
    # a single stamp between two texts ends one and starts the next
    ("[0.00]a[2.00]b[4.00]", [(0.0, 2.0, "a"), (2.0, 4.0, "b")]),
    # missing closing stamp at the end: the end is unknown, not guessed
    ("[0.00]a[2.00][2.00]b", [(0.0, 2.0, "a"), (2.0, None, "b")]),
    # missing opening stamp at the start
    ("a[1.50][1.50]b[3.00]", [(None, 1.5, "a"), (1.5, 3.0, "b")]),
    # text outside any brackets: kept, untimed
    ("Sure, here it is:", [(None, None, "Sure, here it is:")]),
    ("Here:[0.00]a[1.00]", [(None, 0.0, "Here:"), (0.0, 1.0, "a")]),
    # three stamps in a row: the first ends the text before, the last starts the text after
    ("[0.00]a[1.00][9.99][1.20]b[2.00]", [(0.0, 1.0, "a"), (1.2, 2.0, "b")]),
    # an end before its start is not believable
    ("[3.00]a[1.00]", [(3.0, None, "a")]),
    # a start going back before an earlier start cannot be placed
    ("[2.00]a[3.00][1.00]b[4.00]", [(2.0, 3.0, "a"), (None, 4.0, "b")]),
    # overlapping (but not backwards) segments are reported as written
    ("[0.00]a[3.00][2.00]b[4.00]", [(0.0, 3.0, "a"), (2.0, 4.0, "b")]),
    # past the end of the audio: a little is the end, more is dropped
    ("[0.00]a[5.30]", [(0.0, 5.0, "a")]),
    ("[0.00]a[9.00][9.00]b[9.50]", [(0.0, None, "a"), (None, None, "b")]),
    # minutes, stray spaces, integers
    ("[ 0 ]a[ 0:04.5 ]", [(0.0, 4.5, "a")]),
    ("[1:02.5]a[1:03]", [(None, None, "a")]),
    # brackets that are not stamps stay text
    ("[0.00]see [note] and [1.2.3][2.00]", [(0.0, 2.0, "see [note] and [1.2.3]")]),
    # stamps with no text, empty output, whitespace
    ("[0.00][1.00]", []),
    ("", []),
    ("  \n ", []),
])
def test_malformed_outputs(text: str, want: list[tuple]):
    assert spans(parse_sentences(text, 5.0)) == want


def test_minutes_within_a_long_span():
    assert spans(parse_sentences("[1:02.5]a[1:03]", 120.0)) == [(62.5, 63.0, "a")]


def test_no_duration_means_no_upper_bound():
    assert spans(parse_sentences("[0.00]a[500.00]")) == [(0.0, 500.0, "a")]


def test_random_garbage_never_raises_and_keeps_times_sane():
    rng = random.Random(0)
    alphabet = ["[", "]", "0", "1", "2", "9", ".", ":", " ", "a", "b", "\u4f60", "\n", "[1.00]", "[3.50]"]
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        for segment in parse_words(text, 4.0) + parse_sentences(text, 4.0):
            for t in (segment.start, segment.end):
                assert t is None or 0.0 <= t <= 4.0
            if segment.timed:
                assert segment.start <= segment.end
            assert segment.text.strip()


def test_word_output_groups_into_sentences():
    text = "[0.00]Hello[0.40][0.45]there.[0.90][1.20]How[1.40][1.40]are[1.60][1.60]you?[2.00]"
    segments = parse_words(text, 3.0)
    assert spans(segments) == [(0.0, 0.9, "Hello there."), (1.2, 2.0, "How are you?")]
    assert segments[1].words == [Word(1.2, 1.4, "How"), Word(1.4, 1.6, "are"), Word(1.6, 2.0, "you?")]


def test_word_output_with_an_untimed_first_word_leaves_the_start_untimed():
    segments = parse_words("um[0.50][0.50]yes[0.90]", 3.0)
    assert spans(segments) == [(None, 0.9, "um yes")]
    assert segments[0].words[0] == Word(None, 0.5, "um")


def test_cjk_words_join_without_spaces():
    segments = parse_words("[0.00]今天[0.50][0.50]天气[1.00][1.00]很好。[1.80]", 2.0)
    assert spans(segments) == [(0.0, 1.8, "今天天气很好。")]
    assert join_text(["hello", "世界", "ok"]) == "hello 世界 ok"


def test_plain_output_is_one_segment_spanning_its_audio():
    assert spans(parse_output(" hello there ", "none", 7.25)) == [(0.0, 7.25, "hello there")]
    assert parse_output("   ", "none", 7.25) == []


def test_shift_moves_segments_and_words_but_not_missing_times():
    segment = Segment(1.0, None, "a b", [Word(1.0, 1.5, "a"), Word(None, None, "b")])
    moved = shift(segment, 30.0)
    assert (moved.start, moved.end) == (31.0, None)
    assert moved.words == [Word(31.0, 31.5, "a"), Word(None, None, "b")]


def test_parse_timed_text_is_what_both_modes_share():
    assert parse_timed_text("[0.00]x[1.00]", 2.0) == [Word(0.0, 1.0, "x")]
