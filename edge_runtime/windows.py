"""Long audio -> windows of at most `window_seconds`, cut at quiet points.

Each window becomes its own prompt (timestamps are relative to the audio span:
docs/format.md#timestamp-output), so the encoder rows, the KV cache and the text held at
once are those of one window whatever the length of the recording. A cut lands at the
quietest 100 ms within the last `search_seconds` of a window, which keeps it out of words
where the audio allows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .features import SAMPLE_RATE

_FRAME = SAMPLE_RATE // 50  # 20 ms energy frames
_SMOOTH = 5  # frames: a cut needs 100 ms of quiet, not one silent frame inside a word


@dataclass(frozen=True)
class Window:
    index: int
    start: int  # samples
    end: int

    @property
    def start_s(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE


def plan_windows(samples: np.ndarray, window_seconds: float = 30.0,
                 search_seconds: float = 5.0) -> list[Window]:
    """Cover all of `samples` (16 kHz) with consecutive windows, none longer than `window_seconds`."""
    if window_seconds <= 0:
        raise InputError(f"window length must be positive, got {window_seconds} s")
    if not 0 <= search_seconds < window_seconds:
        raise InputError(f"cut search of {search_seconds} s must lie within the {window_seconds} s window")
    longest = int(window_seconds * SAMPLE_RATE)
    search = int(search_seconds * SAMPLE_RATE)
    windows: list[Window] = []
    start = 0
    while start < len(samples):
        end = len(samples) if len(samples) - start <= longest else _quietest(samples, start + longest - search,
                                                                              start + longest)
        windows.append(Window(len(windows), start, end))
        start = end
    return windows


def _quietest(samples: np.ndarray, lo: int, hi: int) -> int:
    """The sample in [lo, hi] at the centre of the quietest 100 ms (hi itself if the range is tiny)."""
    n = (hi - lo) // _FRAME
    if n < _SMOOTH:
        return hi
    frames = samples[lo:lo + n * _FRAME].reshape(n, _FRAME).astype(np.float64)
    energy = np.convolve((frames ** 2).mean(axis=1), np.ones(_SMOOTH), mode="valid")
    best = int(np.argmin(energy))
    return lo + (best + _SMOOTH // 2) * _FRAME + _FRAME // 2
