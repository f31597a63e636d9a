"""Voice activity: WebRTC's VAD (the `webrtcvad` library) gated by a level floor.

WebRTC's GMM detector is tuned for telephony and calls faint steady noise speech, so a
frame counts as speech only when the detector says so *and* its level is above a floor.
The tracker turns per-frame decisions into utterance starts and ends on the stream clock.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .features import SAMPLE_RATE

FRAME_SAMPLES = 480  # 30 ms, one of the frame sizes WebRTC's VAD accepts


@dataclass(frozen=True)
class VadConfig:
    aggressiveness: int = 2  # WebRTC mode 0..3: higher rejects more non-speech
    level_floor_dbfs: float = -50.0
    start_frames: int = 4  # speech frames among the last `start_window` to open an utterance
    start_window: int = 6
    min_silence_s: float = 0.6  # silence that ends an utterance


@dataclass(frozen=True)
class VadEvent:
    kind: str  # "start" or "end"
    sample: int  # stream position: first speech sample, or first sample of the ending silence


class VoiceActivity:
    """Feed 16 kHz float32 blocks of any size; get utterance start/end events."""

    def __init__(self, config: VadConfig = VadConfig()):
        self.config = config
        import webrtcvad  # the `mic` extra: needed only once a stream runs

        self._vad = webrtcvad.Vad(config.aggressiveness)
        self._pending = np.zeros(0, dtype=np.float32)
        self._position = 0  # stream sample index of the first pending sample
        self._recent: list[bool] = []
        self._silent_frames = 0
        self.in_speech = False
        self._floor = 10 ** (config.level_floor_dbfs / 20)
        self._end_frames = max(1, round(config.min_silence_s * SAMPLE_RATE / FRAME_SAMPLES))

    def is_speech_frame(self, frame: np.ndarray) -> bool:
        if np.sqrt(np.mean(np.square(frame, dtype=np.float64))) < self._floor:
            return False
        pcm = (np.clip(frame, -1.0, 1.0) * 32767).astype("<i2")
        return self._vad.is_speech(pcm.tobytes(), SAMPLE_RATE)

    def feed(self, samples: np.ndarray) -> list[VadEvent]:
        self._pending = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32)])
        events: list[VadEvent] = []
        while len(self._pending) >= FRAME_SAMPLES:
            frame, self._pending = self._pending[:FRAME_SAMPLES], self._pending[FRAME_SAMPLES:]
            speech = self.is_speech_frame(frame)
            start = self._position
            self._position += FRAME_SAMPLES
            self._recent = (self._recent + [speech])[-self.config.start_window:]
            if not self.in_speech:
                if sum(self._recent) >= self.config.start_frames:
                    self.in_speech = True
                    self._silent_frames = 0
                    # the utterance began at the earliest speech frame among the recent ones
                    frames_back = len(self._recent) - 1 - self._recent.index(True)
                    events.append(VadEvent("start", start - frames_back * FRAME_SAMPLES))
            elif speech:
                self._silent_frames = 0
            else:
                self._silent_frames += 1
                if self._silent_frames >= self._end_frames:
                    self.in_speech = False
                    self._recent = []
                    events.append(VadEvent("end", self._position - self._silent_frames * FRAME_SAMPLES))
        return events
