"""`listen --record`: everything captured, written to a WAV file that survives a crash.

The file is 16 kHz mono 16-bit PCM, the audio exactly as it was transcribed (after
resampling), so `moss-edge transcribe FILE` can redo the work. Samples are written at least
once a second, and each write rewrites the header's sizes (the standard `wave` module does
that in `writeframes`) and hands both to the OS: a process killed with SIGKILL leaves a file
that any WAV reader opens, holding all but the last second (docs/streaming.md#recording).
"""
from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from .errors import InputError
from .features import SAMPLE_RATE

# the RIFF sizes are 32-bit: at 32 kB/s a WAV file holds about 37 hours
MAX_BYTES = 2**32 - 1 - 44


class RecordingError(InputError):
    """The recording file cannot be created or written."""


class WavRecorder:
    def __init__(self, path: str | Path, flush_s: float = 1.0):
        self.path = Path(path)
        if self.path.suffix.lower() != ".wav":
            raise RecordingError(f"recording {self.path}: only .wav files can be recorded")
        try:
            self._file = open(self.path, "wb")
        except OSError as exc:
            raise RecordingError(f"cannot record to {self.path}: {exc.strerror}") from None
        self._wav = wave.open(self._file, "wb")
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(SAMPLE_RATE)
        self._pending: list[bytes] = []
        self._pending_samples = 0
        self._flush_samples = int(flush_s * SAMPLE_RATE)
        self.samples = 0  # written so far (pending included)
        self.flush()  # the header, so that even an empty recording is a valid file

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE

    def write(self, samples: np.ndarray) -> None:
        if 2 * (self.samples + len(samples)) > MAX_BYTES:
            raise RecordingError(f"recording {self.path} is full: a WAV file holds at most "
                                 f"{MAX_BYTES // (2 * SAMPLE_RATE * 3600)} hours")
        # x 32768, the inverse of how readers scale 16-bit samples: 16-bit input comes back exactly
        self._pending.append(np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2").tobytes())
        self._pending_samples += len(samples)
        self.samples += len(samples)
        if self._pending_samples >= self._flush_samples:
            self.flush()

    def flush(self) -> None:
        self._wav.writeframes(b"".join(self._pending))  # also rewrites the header's sizes
        self._file.flush()
        self._pending, self._pending_samples = [], 0

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._wav.close()  # leaves our file object open
            self._file.close()
