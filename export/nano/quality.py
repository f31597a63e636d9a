"""What a bundle gets right on held-out speech: word error rate and sentence-timestamp error.

Both are measured through the runtime (ONNX encoder + llama.cpp), exactly as users run it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from edge_runtime.features import SAMPLE_RATE
from edge_runtime.prompt import SENTENCE_TIMESTAMPS, TRANSCRIBE
from edge_runtime.speech import Clip, Sentence
from edge_runtime.timestamps import Segment, parse_sentences
from edge_runtime.transcribe import MossAudio

from .corpus import word_errors, words

MAX_TOKENS = 200


@dataclass
class ClipScore:
    reference_words: int
    word_errors: int  # plain transcription
    timestamp_word_errors: int  # the text of the timestamped answer
    boundary_errors_s: list[float]  # |start - true start| and |end - true end| of matched sentences
    sentences: int
    matched_sentences: int
    times_inside_and_ordered: bool


def match_sentences(truth: Sequence[Sentence], predicted: Sequence[Segment]) -> list[tuple[Sentence, Segment]]:
    """Each true sentence with the timed predicted segment that overlaps it most (if any):
    timestamp error is measured where the model placed a sentence, whatever its words."""
    timed = [p for p in predicted if p.timed]
    pairs = []
    for sentence in truth:
        overlaps = [(min(sentence.end, p.end) - max(sentence.start, p.start), p) for p in timed]
        best = max(overlaps, key=lambda o: o[0], default=None)
        if best is not None and best[0] > 0:
            pairs.append((sentence, best[1]))
    return pairs


def boundary_errors(truth: Sequence[Sentence], predicted: Sequence[Segment]) -> list[float]:
    """|start - true start| and |end - true end| of every matched sentence, seconds."""
    pairs = match_sentences(truth, predicted)
    return [abs(p.start - s.start) for s, p in pairs] + [abs(p.end - s.end) for s, p in pairs]


def inside_and_ordered(segments: Sequence[Segment], duration: float) -> bool:
    last = 0.0
    for s in segments:
        if not s.timed:
            continue
        if not (last - 1e-6 <= s.start <= s.end <= duration + 1e-6):
            return False
        last = s.start
    return True


def score_clip(model: MossAudio, clip: Clip) -> ClipScore:
    truth = words(" ".join(s.text for s in clip.sentences))
    plain = model.generate(clip.audio, TRANSCRIBE, max_tokens=MAX_TOKENS).text
    stamped = model.generate(clip.audio, SENTENCE_TIMESTAMPS, max_tokens=MAX_TOKENS).text
    duration = len(clip.audio) / SAMPLE_RATE
    segments = parse_sentences(stamped, duration)
    errors = boundary_errors(clip.sentences, segments)  # two per matched sentence
    return ClipScore(len(truth), word_errors(truth, words(plain)),
                     word_errors(truth, words(" ".join(s.text for s in segments))),
                     errors, len(clip.sentences), len(errors) // 2, inside_and_ordered(segments, duration))


def summarize(scores: Sequence[ClipScore]) -> dict[str, float]:
    n_words = sum(s.reference_words for s in scores)
    boundaries = [e for s in scores for e in s.boundary_errors_s]
    # the worst single clip: the range one clip (the demo's, a user's) may fall in
    clip_wer = [s.word_errors / max(1, s.reference_words) for s in scores]
    clip_mae = [1000 * sum(s.boundary_errors_s) / len(s.boundary_errors_s) for s in scores if s.boundary_errors_s]
    return {
        "clips": len(scores),
        "words": n_words,
        "wer": sum(s.word_errors for s in scores) / n_words,
        "timestamp_text_wer": sum(s.timestamp_word_errors for s in scores) / n_words,
        "timestamp_mae_ms": 1000 * sum(boundaries) / max(1, len(boundaries)),
        "wer_worst_clip": max(clip_wer),
        "timestamp_mae_ms_worst_clip": max(clip_mae, default=float("nan")),
        "sentences_matched": sum(s.matched_sentences for s in scores) / sum(s.sentences for s in scores),
        "clips_times_inside_and_ordered": sum(s.times_inside_and_ordered for s in scores) / len(scores),
    }


def evaluate(bundle: Path, clips: Sequence[Clip], threads: int | None = None) -> dict[str, float]:
    model = MossAudio(bundle, threads=threads)
    return summarize([score_clip(model, clip) for clip in clips])
