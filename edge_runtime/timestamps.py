"""What the model writes -> Segment/Word with times (docs/format.md#timestamp-output).

The model answers the timestamp prompts with `[s.ss]text[e.ee]` runs: `[0.00]hello
there[2.01][2.01]the weather is nice today[4.32]`. Real output is messier (a closing stamp
missing, stamps out of order or past the end of the audio, text outside any brackets), so the
parser never raises and never makes a time up: a time it cannot trust is `None`, and such
text is reported untimed rather than dropped. Times are relative to the audio span in the
prompt; `shift` moves them to the position of that span in the whole recording.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Callable

# `[12.34]`, also `[1:02.5]` / `[0:01:02.5]` and stray spaces inside the brackets.
_STAMP = re.compile(r"\[\s*((?:\d{1,3}:){0,2}\d+(?:\.\d+)?)\s*\]")

# How far past the end of the audio span a stamp may be and still count as its end: the
# prompt's own time markers make the model round up; anything later is not about this audio.
END_TOLERANCE_S = 0.5

_SENTENCE_END = tuple(".?!。？！…")


@dataclass(frozen=True)
class Word:
    start: float | None
    end: float | None
    text: str


@dataclass(frozen=True)
class Segment:
    start: float | None  # None: the model gave no usable time for this side
    end: float | None
    text: str
    words: list[Word] = field(default_factory=list)

    @property
    def timed(self) -> bool:
        return self.start is not None and self.end is not None


def _seconds(stamp: str) -> float:
    value = 0.0
    for part in stamp.split(":"):
        value = value * 60 + float(part)
    return value


def parse_timed_text(text: str, duration: float | None = None) -> list[Word]:
    """`[s]text[e]...` -> one Word per bracketed run of text, times relative to the span.

    Each text takes the last stamp of the run of stamps before it as its start and the first
    of the run after it as its end, so `[2.01][2.01]` splits two texts and a single stamp
    between two texts ends one and starts the next. A time is dropped (None) when it lies past
    `duration` + END_TOLERANCE_S, when an end precedes its start, or when a start goes back
    before an earlier text's start.
    """
    pieces = _STAMP.split(text)  # text, stamp, text, stamp, ..., text
    texts: list[tuple[list[float], str]] = []  # (stamps before, text)
    stamps: list[float] = []
    for i, piece in enumerate(pieces):
        if i % 2:
            stamps.append(_seconds(piece))
        elif piece.strip():
            texts.append((stamps, piece.strip()))
            stamps = []
    closing = [before for before, _ in texts[1:]] + [stamps]
    words: list[Word] = []
    latest_start = 0.0
    for (before, body), after in zip(texts, closing):
        start = _within(before[-1], duration) if before else None
        end = _within(after[0], duration) if after else None
        if start is not None and start < latest_start:
            start = None  # the stamps went backwards: this one cannot be placed
        if end is not None and end < (latest_start if start is None else start):
            end = None
        latest_start = latest_start if start is None else start
        words.append(Word(start, end, body))
    return words


def _within(t: float, duration: float | None) -> float | None:
    if duration is None or t <= duration:
        return t
    return duration if t <= duration + END_TOLERANCE_S else None


def parse_sentences(text: str, duration: float | None = None) -> list[Segment]:
    """Sentence-level output -> segments (without words)."""
    return [Segment(w.start, w.end, w.text) for w in parse_timed_text(text, duration)]


def parse_words(text: str, duration: float | None = None) -> list[Segment]:
    """Word-level output (the same brackets around each word) -> sentences holding their words.

    A sentence ends after a word ending in . ? ! (or their CJK forms); its times are its first
    word's start and its last word's end, so an untimed edge word leaves that side untimed.
    """
    segments: list[Segment] = []
    sentence: list[Word] = []
    for word in parse_timed_text(text, duration):
        sentence.append(word)
        if word.text.endswith(_SENTENCE_END):
            segments.append(_sentence(sentence))
            sentence = []
    if sentence:
        segments.append(_sentence(sentence))
    return segments


def _sentence(words: list[Word]) -> Segment:
    return Segment(words[0].start, words[-1].end, join_text([w.text for w in words]), list(words))


def _is_cjk(char: str) -> bool:
    return "\u2e80" <= char <= "\u9fff" or "\uac00" <= char <= "\ud7af" or "\uff00" <= char <= "\uffef"


def join_text(parts: list[str]) -> str:
    """Join pieces with spaces, except between two CJK characters (no spaces in that script)."""
    out = ""
    for part in (p.strip() for p in parts):
        if not part:
            continue
        if out and not (_is_cjk(out[-1]) and _is_cjk(part[0])):
            out += " "
        out += part
    return out


def remap(segment: Segment, to_file: Callable[[float | None, bool], float | None]) -> Segment:
    """Move a segment (and its words) from span-relative to recording time: `to_file(t, is_end)`."""
    return replace(segment, start=to_file(segment.start, False), end=to_file(segment.end, True),
                   words=[replace(w, start=to_file(w.start, False), end=to_file(w.end, True)) for w in segment.words])


def shift(segment: Segment, offset: float) -> Segment:
    """Move a segment (and its words) by `offset` seconds."""
    return remap(segment, lambda t, is_end: None if t is None else round(t + offset, 3))


def parse_output(text: str, mode: str, duration: float) -> list[Segment]:
    """One prompt's output -> segments, for the timestamp mode the prompt asked for.
    Plain transcription ("none") is one segment spanning the audio it came from."""
    if mode == "sentence":
        return parse_sentences(text, duration)
    if mode == "word":
        return parse_words(text, duration)
    return [Segment(0.0, round(duration, 3), text.strip())] if text.strip() else []
