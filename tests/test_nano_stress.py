"""export/nano/stress.py: the stress set lies outside training's grammar, speeds, pitches and
voices, is fixed by its seed, and its clips carry their labels and true sentence times."""
from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from edge_runtime.features import SAMPLE_RATE
from moss_audio_edge.export.nano import corpus, stress

SPECS = 400  # drawing is fast (no audio); enough for every bucket to occur many times


@pytest.fixture(scope="module")
def specs() -> list[stress.StressSpec]:
    return stress.draw_specs(SPECS)


def digit_runs(text: str) -> list[list[str]]:
    """The maximal runs of spoken digits in a sentence."""
    runs: list[list[str]] = []
    previous_digit = False
    for word in text.split():
        digit = word in corpus.DIGITS
        if digit and not previous_digit:
            runs.append([])
        if digit:
            runs[-1].append(word)
        previous_digit = digit
    return runs


def pattern(text: str) -> str:
    """The sentence with each run of digits replaced by #: its template."""
    out: list[str] = []
    for word in text.split():
        if word in corpus.DIGITS:
            if not out or out[-1] != "#":
                out.append("#")
        else:
            out.append(word)
    return " ".join(out)


def training_sentences() -> list[str]:
    rng = random.Random(0)
    return [corpus.random_sentence(rng) for _ in range(20000)]


def test_speeds_pitches_and_voices_lie_outside_training(specs):
    split = corpus.split_variants()
    trained_speeds = corpus.TRAIN_SPEEDS + corpus.HELD_OUT_SPEEDS
    accents = set(stress.english_voices())
    for spec in specs:
        voice = spec.voice
        assert voice.speed not in trained_speeds
        assert voice.speed < min(trained_speeds) or voice.speed > max(trained_speeds)
        assert voice.pitch < 15 or voice.pitch > 85  # training draws 15-85
        assert voice.variant not in split.train_variants
        assert voice.accent in accents
        assert (spec.labels.voice_kind == stress.HELD_OUT_VOICE) == (voice.variant in split.held_out_variants)
        assert ("-g" in voice.args()) == ("pauses" in spec.labels.rate)
    assert {s.labels.rate for s in specs} == set(stress.RATES)
    assert {s.labels.pitch for s in specs} == set(stress.PITCHES)
    assert {s.labels.level for s in specs} == {stress.AS_SYNTHESISED, stress.QUIET}
    assert {s.labels.voice_kind for s in specs} == {stress.HELD_OUT_VOICE, stress.EFFECT_VOICE}
    assert {s.voice.variant for s in specs} >= set(split.held_out_variants)


def test_sentences_hold_one_digit_string_of_two_to_seven_digits_often_with_a_repeat(specs):
    sentences = [t for s in specs for t in s.texts]
    assert all(2 <= len(s.texts) <= 4 for s in specs)
    runs = [digit_runs(t) for t in sentences]
    assert all(len(r) == 1 and 2 <= len(r[0]) <= 7 for r in runs)
    repeated = [any(a == b for a, b in zip(r[0], r[0][1:])) for r in runs]
    assert sum(repeated) > len(sentences) / 2
    assert any(len(r[0]) == 7 for r in runs)


def test_the_grammar_is_not_trainings_but_uses_only_its_words(specs):
    training = training_sentences()
    vocabulary = {w for t in training for w in t.split()}
    stress_patterns = {pattern(t) for s in specs for t in s.texts}
    assert all(set(t.split()) <= vocabulary for s in specs for t in s.texts)
    # bare digit strings ("#") are the free-digit part, which training's grammar also has
    assert "#" in stress_patterns
    assert not (stress_patterns - {"#"}) & {pattern(t) for t in training}
    assert len(stress_patterns) > len(stress.PHRASES)


def test_a_seed_fixes_the_set_and_another_seed_changes_it():
    assert stress.draw_specs(30, seed=1) == stress.draw_specs(30, seed=1)
    assert stress.draw_specs(30, seed=1) != stress.draw_specs(30, seed=2)


def decibels(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(x ** 2))))


def test_a_rendered_clip_carries_its_labels_true_times_and_level(specs):
    spec = next(s for s in specs if s.labels.rate.startswith("fast"))
    spec = dataclasses.replace(spec, texts=("two two", "call mom at four four"),
                               labels=dataclasses.replace(spec.labels, level=stress.QUIET))
    first = stress.render(spec, np.random.default_rng(3))
    again = stress.render(spec, np.random.default_rng(3))
    assert np.array_equal(first.clip.audio, again.clip.audio)
    assert first.labels == spec.labels and first.clip.voice == spec.voice
    sentences = first.clip.sentences
    assert [s.text for s in sentences] == list(spec.texts)
    assert 0 < sentences[0].start < sentences[0].end < sentences[1].start < sentences[1].end
    assert sentences[1].end * SAMPLE_RATE <= len(first.clip.audio)
    audio = first.clip.audio.astype(np.float64)
    speech = np.concatenate([audio[round(s.start * SAMPLE_RATE):round(s.end * SAMPLE_RATE)] for s in sentences])
    lead = audio[:round(sentences[0].start * SAMPLE_RATE)]
    assert decibels(speech) == pytest.approx(stress.QUIET_DBFS, abs=0.5)
    assert decibels(lead) == pytest.approx(stress.QUIET_DBFS - stress.NOISE_FLOOR_SNR_DB, abs=2.0)
