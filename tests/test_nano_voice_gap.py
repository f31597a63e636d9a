"""benchmarks/nano_voice_gap.py: the training-voice set speaks only in training's variants and
speeds, and the breakdown counts each clip's words under its own voice."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from nano_voice_gap import breakdown  # noqa: E402

from moss_audio_edge.export.nano import corpus  # noqa: E402
from moss_audio_edge.export.nano.quality import ClipScore  # noqa: E402


def test_clips_in_training_voices_use_only_training_variants_and_speeds():
    split = corpus.split_variants()
    clips = corpus.evaluation_clips(3, seed=7, variants=split.train_variants, speeds=corpus.TRAIN_SPEEDS)
    assert all(c.voice.variant in split.train_variants and c.voice.speed in corpus.TRAIN_SPEEDS for c in clips)
    held_out = corpus.held_out_clips(3, seed=7)
    assert all(c.voice.variant in split.held_out_variants and c.voice.speed in corpus.HELD_OUT_SPEEDS for c in held_out)


def test_breakdown_pools_the_words_of_each_voice_setting():
    def clip(accent: str) -> corpus.Clip:
        return corpus.Clip(np.zeros(1, np.float32), [], corpus.Voice(accent, "m1", 150, 50))

    def score(words: int, errors: int) -> ClipScore:
        return ClipScore(words, errors, 0, [], 1, 1, True)

    clips = [clip("en-us"), clip("en-gb"), clip("en-us")]
    scores = [score(10, 5), score(4, 0), score(30, 3)]
    got = breakdown(clips, scores, lambda c: c.voice.accent)
    assert got == {"en-gb": {"words": 4, "wer": 0.0}, "en-us": {"words": 40, "wer": 8 / 40}}
