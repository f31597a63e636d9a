"""A repetition-loop guard for decoding.

LLMs of this family sometimes fall into a loop: the same span of tokens over and over, or
timestamped segments whose times stop advancing. Left alone the decoder spends its whole
output budget (minutes on a small CPU) and writes the loop into the transcript. The guard
watches the tokens as they are chosen and says when to stop, and how much of the output to
keep: everything up to the end of the loop's first copy (or of the last segment that moved
time forward). It only ever stops decoding early: output without a loop is untouched.

Defaults are conservative: a span must repeat at least `min_repeats` times in a row *and*
the repeats must cover `min_tokens` tokens, so "nine nine nine nine" or a refrain sung
twice is not a loop, while 48 tokens of the same few words is. See docs/format.md#loop-guard.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

_STAMP = re.compile(rb"\[(\d+(?:\.\d+)?)\]")


@dataclass(frozen=True)
class LoopGuardConfig:
    max_span: int = 64  # longest repeated span (tokens) looked for
    min_repeats: int = 4  # copies of the span in a row, at least...
    min_tokens: int = 48  # ...and covering at least this many tokens
    stalled_segments: int = 4  # timestamped segments in a row that do not move time forward


class LoopGuard:
    """Feed each chosen token to `add`; when it returns True, stop and keep `tokens[:keep]`.

    `token_bytes` (for timestamped output) lets the guard read the `[ss.cc]` stamps: a
    segment whose end stamp is not later than every earlier one, or later than `audio_s`
    (plus a second), makes no progress."""

    def __init__(self, config: LoopGuardConfig, token_bytes: Callable[[int], bytes] | None = None,
                 audio_s: float = math.inf):
        self.config = config
        self._token_bytes = token_bytes
        self._time_limit = audio_s + 1.0
        self.tokens: list[int] = []
        # _runs[L]: how many tokens in a row (ending now) equal the token L places before them
        self._runs = [0] * (config.max_span + 1)
        self._text = b""  # decoded bytes not yet read for stamps
        self._stamps = 0  # stamps read so far: even ones open a segment, odd ones close it
        self._latest_end = -math.inf
        self._stalled = 0
        self._kept_through_stamps = 0  # tokens up to the end of the last segment that made progress
        self.tripped = False
        self.keep = 0

    def add(self, token: int) -> bool:
        self.tokens.append(token)
        n = len(self.tokens)
        for span in range(1, min(self.config.max_span, n - 1) + 1):
            repeated = self.tokens[-1] == self.tokens[-1 - span]
            self._runs[span] = self._runs[span] + 1 if repeated else 0
            copies = self._runs[span] // span + 1
            if copies >= self.config.min_repeats and copies * span >= self.config.min_tokens:
                return self._trip(n - self._runs[span])  # the first copy stays
        if self._token_bytes is not None and self._stamps_stalled(token):
            return self._trip(self._kept_through_stamps)
        return False

    def _stamps_stalled(self, token: int) -> bool:
        self._text += self._token_bytes(token)
        while match := _STAMP.search(self._text):
            self._text = self._text[match.end():]
            self._stamps += 1
            if self._stamps % 2:
                continue  # a segment's start stamp
            end = float(match.group(1))
            if self._latest_end < end <= self._time_limit:
                self._latest_end, self._stalled = end, 0
                self._kept_through_stamps = len(self.tokens)
            else:
                self._stalled += 1
                if self._stalled >= self.config.stalled_segments:
                    return True
        return False

    def _trip(self, keep: int) -> bool:
        self.tripped, self.keep = True, keep
        return True

    def kept(self, tokens: list[int]) -> list[int]:
        """`tokens` (what was decoded) without the loop, if the guard tripped."""
        return tokens[:self.keep] if self.tripped else tokens


def new_guard(config: LoopGuardConfig | None, token_bytes: Callable[[int], bytes], timestamped: bool,
              audio_s: float = math.inf) -> LoopGuard | None:
    """A fresh guard for one decode (None when the guard is off); stamps are read only from
    timestamped output."""
    if config is None:
        return None
    return LoopGuard(config, token_bytes if timestamped else None, audio_s)


def finish_reason(tokens: list[int], max_tokens: int, guard: LoopGuard | None) -> str:
    """Why a decode ended: "repetition" (the guard), "length" (the budget) or "stop"."""
    if guard is not None and guard.tripped:
        return "repetition"
    return "length" if len(tokens) >= max_tokens else "stop"
