"""The prompt as a sequence of pieces: token runs and audio runs (docs/format.md#prompt).

Audio runs are fed to llama.cpp as embedding batches and token runs (chat frame, time
markers, instruction) as token batches, so the prompt is never a flat id list here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union

from .bundle import Manifest

TRANSCRIBE = "Transcribe the audio."
SENTENCE_TIMESTAMPS = (
    "Transcribe the audio into sentence-level timestamps using the format [xx.xx]text[yy.yy], "
    "where xx.xx and yy.yy are timestamps with centisecond precision rounded to two decimal "
    "places. Concatenate consecutive segments without breaks. For example: [0.00]hello "
    "there[2.01][2.01]the weather is nice today[4.32]. Do not include any additional content "
    "such as explanations, headings, or annotations."
)
# No official word-level prompt is published; this asks for the sentence format per word.
WORD_TIMESTAMPS = (
    "Transcribe the audio into word-level timestamps using the format [xx.xx]word[yy.yy], "
    "where xx.xx and yy.yy are timestamps with centisecond precision rounded to two decimal "
    "places. Concatenate consecutive words without breaks. For example: [0.00]hello[0.42]"
    "[0.42]there[0.80]. Do not include any additional content such as explanations, "
    "headings, or annotations."
)
INSTRUCTIONS = {"none": TRANSCRIBE, "sentence": SENTENCE_TIMESTAMPS, "word": WORD_TIMESTAMPS}
TIMESTAMP_MODES = tuple(INSTRUCTIONS)

# Output budgets (`max_tokens`). A transcription's default is scaled to its audio: tokens per
# second of words plus the stamps each mode asks for; a live readout gets a few more for the
# stamps that close its last segment.
OUTPUT_TOKENS_PER_SECOND = {"none": 10, "sentence": 16, "word": 50}
MIN_TRANSCRIPTION_TOKENS = 64
READOUT_EXTRA_TOKENS = 16
ANSWER_TOKENS = 512  # answers to questions (`ask`, `run`, chat completions)

# Assistant-turn prefix that skips the reasoning (Qwen3's `enable_thinking=False`).
NO_THINKING = "<think>\n\n</think>\n\n"
# Forced into the context when the thinking budget is spent (answer.py).
END_THINKING = "\n</think>\n\n"


def transcription_budget(mode: str, seconds: float) -> int:
    """The default output budget of one transcription window of `seconds` in `mode`."""
    return max(MIN_TRANSCRIPTION_TOKENS, math.ceil(seconds * OUTPUT_TOKENS_PER_SECOND[mode]))


def readout_budget(mode: str, seconds: float, tokens_per_second: float | None = None) -> int:
    """The runaway guard of a live readout over `seconds` of audio (a stop token ends it sooner)."""
    return READOUT_EXTRA_TOKENS + int((tokens_per_second or OUTPUT_TOKENS_PER_SECOND[mode]) * seconds)

LANGUAGE_NAMES = {"en": "English", "zh": "Chinese", "yue": "Cantonese", "ja": "Japanese", "ko": "Korean",
                  "fr": "French", "de": "German", "es": "Spanish", "it": "Italian", "pt": "Portuguese",
                  "ru": "Russian", "ar": "Arabic"}


def with_language(instruction: str, language: str | None) -> str:
    """MOSS-Audio has no language token: a known language is stated in the instruction."""
    if not language:
        return instruction
    return f"{instruction} The speech is in {LANGUAGE_NAMES.get(language.lower(), language)}."


@dataclass(frozen=True)
class Tokens:
    ids: tuple[int, ...]


@dataclass(frozen=True)
class Audio:
    start: int  # first row of the encoder output this run takes
    count: int


Piece = Union[Tokens, Audio]


def marker_ids(second: int, digits: tuple[int, ...]) -> tuple[int, ...]:
    """A time marker: the decimal digits of `second` as single digit tokens."""
    return tuple(digits[int(c)] for c in str(second))


def audio_span(manifest: Manifest, n_tokens: int, first: int = 0) -> list[Piece]:
    """Audio rows `first`..`n_tokens-1` of a span with their time markers. Markers depend only
    on the token count, so spans built chunk by chunk concatenate to the offline span."""
    markers = manifest.time_markers
    pieces: list[Piece] = []
    if not markers.enabled:
        return [Audio(first, n_tokens - first)] if n_tokens > first else []
    group = markers.every_tokens
    start = first
    while start < n_tokens:
        end = min(n_tokens, (start // group + 1) * group)
        pieces.append(Audio(start, end - start))
        if end % group == 0:  # the group is complete: its marker follows it
            second = end // group * markers.seconds_per_marker
            pieces.append(Tokens(marker_ids(second, manifest.tokens.digits)))
        start = end
    return pieces


def prompt_head(manifest: Manifest, tokenize: Callable[[str], list[int]],
                system: str | None = None) -> list[Piece]:
    """Everything before the audio rows: system turn, user turn opening, audio start."""
    system = manifest.system_prompt if system is None else system
    text = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"
    return [Tokens(tuple(tokenize(text)) + (manifest.tokens.audio_start,))]


def prompt_tail(manifest: Manifest, tokenize: Callable[[str], list[int]], instruction: str) -> list[Piece]:
    """Everything after the audio rows: audio end, the instruction, the assistant turn."""
    text = f"\n{instruction}<|im_end|>\n<|im_start|>assistant\n"
    return [Tokens((manifest.tokens.audio_end,) + tuple(tokenize(text)))]


def question_tail(manifest: Manifest, tokenize: Callable[[str], list[int]], question: str,
                  thinking: bool | None = None) -> list[Piece]:
    """The prompt after the audio for a question; `thinking=False` opens the assistant turn with
    an empty reasoning block (Qwen3's `enable_thinking=False`), as its own token run."""
    pieces = prompt_tail(manifest, tokenize, question)
    if thinking is False:
        pieces.append(Tokens(tuple(tokenize(NO_THINKING))))
    return pieces


def build_prompt(manifest: Manifest, tokenize: Callable[[str], list[int]], n_audio_tokens: int,
                 instruction: str, system: str | None = None) -> list[Piece]:
    return (prompt_head(manifest, tokenize, system) + audio_span(manifest, n_audio_tokens)
            + prompt_tail(manifest, tokenize, instruction))


def prompt_length(pieces: list[Piece]) -> int:
    """Positions the pieces take in the KV cache."""
    return sum(len(p.ids) if isinstance(p, Tokens) else p.count for p in pieces)


def flat_ids(pieces: list[Piece], audio_token: int) -> list[int]:
    """The prompt as one id list (audio rows as placeholders): for display and checks."""
    ids: list[int] = []
    for piece in pieces:
        ids += piece.ids if isinstance(piece, Tokens) else [audio_token] * piece.count
    return ids
