"""Long audio -> windows of at most `window_seconds`, cut at quiet points.

Each window becomes its own prompt (timestamps are relative to the audio span:
docs/format.md#timestamp-output), so the encoder rows, the KV cache and the text held at
once are those of one window whatever the length of the recording. A cut lands at the
quietest 100 ms within the last `search_seconds` of a window, which keeps it out of words
where the audio allows.

With a voice activity filter (`plan_speech_windows`, `vad_filter=True`) only speech is fed
to the model: the spans the VAD finds, padded, are joined into windows and the silences
between them are left out; a window's times are mapped back to the file's clock span by span
(docs/format.md#skipped-silence).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .features import SAMPLE_RATE
from .vad import VadConfig, VoiceActivity

_FRAME = SAMPLE_RATE // 50  # 20 ms energy frames
_SMOOTH = 5  # frames: a cut needs 100 ms of quiet, not one silent frame inside a word


@dataclass(frozen=True)
class Window:
    index: int
    start: int  # samples
    end: int
    # the file spans (samples) joined into this window's audio; empty: all of start..end
    spans: tuple[tuple[int, int], ...] = ()

    @property
    def start_s(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def parts(self) -> tuple[tuple[int, int], ...]:
        return self.spans or ((self.start, self.end),)

    @property
    def duration_s(self) -> float:
        """Seconds of audio the model hears (the joined spans)."""
        return sum(end - start for start, end in self.parts) / SAMPLE_RATE

    def audio(self, samples: np.ndarray) -> np.ndarray:
        if not self.spans:
            return samples[self.start:self.end]
        return np.concatenate([samples[start:end] for start, end in self.spans])

    def file_time(self, t: float | None, is_end: bool = False) -> float | None:
        """A time in the window's audio -> seconds in the file. A time where two joined spans
        meet belongs to the earlier one as an end and to the later one as a start."""
        if t is None:
            return None
        if not self.spans:
            return round(t + self.start_s, 3)
        joined = 0.0
        for start, end in self.parts:
            length = (end - start) / SAMPLE_RATE
            if t < joined + length or (is_end and t <= joined + length):
                return round(start / SAMPLE_RATE + max(0.0, t - joined), 3)
            joined += length
        start, end = self.parts[-1]
        return round(end / SAMPLE_RATE + (t - joined), 3)  # past the audio: as far past its end


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


@dataclass(frozen=True)
class SpeechFilter:
    """How `plan_speech_windows` finds the audio worth transcribing."""
    vad: VadConfig = VadConfig(min_silence_s=1.0)  # silence shorter than this stays inside a span
    pad_s: float = 0.3  # audio kept before and after each span (the stream keeps as much)


def speech_spans(samples: np.ndarray, config: SpeechFilter = SpeechFilter()) -> list[tuple[int, int]]:
    """The file's speech as (start, end) samples: VAD utterances, padded, overlaps merged."""
    vad = VoiceActivity(config.vad)
    events = vad.feed(samples)
    starts = [e.sample for e in events if e.kind == "start"]
    ends = [e.sample for e in events if e.kind == "end"] + ([len(samples)] if vad.in_speech else [])
    pad = int(config.pad_s * SAMPLE_RATE)
    spans: list[tuple[int, int]] = []
    for start, end in zip(starts, ends):
        start, end = max(0, start - pad), min(len(samples), end + pad)
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))
    return spans


def plan_speech_windows(samples: np.ndarray, window_seconds: float = 30.0, search_seconds: float = 5.0,
                        config: SpeechFilter = SpeechFilter()) -> list[Window]:
    """Windows of the file's speech only: consecutive speech spans joined while they fit in
    `window_seconds`; a span longer than that is cut as `plan_windows` cuts."""
    longest = int(window_seconds * SAMPLE_RATE)
    pieces: list[tuple[int, int]] = []
    for start, end in speech_spans(samples, config):
        for cut in plan_windows(samples[start:end], window_seconds, search_seconds):
            pieces.append((start + cut.start, start + cut.end))
    windows: list[Window] = []
    group: list[tuple[int, int]] = []
    for piece in pieces + [None]:
        if piece is None or (group and sum(e - s for s, e in group) + piece[1] - piece[0] > longest):
            if group:
                windows.append(Window(len(windows), group[0][0], group[-1][1], tuple(group)))
            group = []
        if piece is not None:
            group.append(piece)
    return windows
