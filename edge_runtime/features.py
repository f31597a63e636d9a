"""Whisper-compatible log-mel features (docs/format.md#log-mel-front-end), numpy only.

Matches transformers' WhisperFeatureExtractor(feature_size=128) without the 30 s padding.
The pipeline is split so a streaming front end can reuse it: `log_mel_frames` turns
samples into un-normalised log10 mel frames, `normalize_log_mel` applies the clamp and
scaling given a maximum (the whole clip's here, the running one when streaming).
"""

from functools import lru_cache

import numpy as np

from .errors import InputError

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 128

MEL_FLOOR = 1e-10
DYNAMIC_RANGE = 8.0  # log10 units (80 dB) kept below the maximum

# Frames per FFT batch: keeps the float64 work arrays to a few MB on long clips.
_BLOCK_FRAMES = 2048


@lru_cache(maxsize=1)
def hann_window() -> np.ndarray:
    """Periodic Hann window of N_FFT samples (torch.hann_window's default)."""
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)
    window.flags.writeable = False
    return window


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    # Slaney scale: linear below 1 kHz, logarithmic above.
    hz = np.asarray(hz, dtype=np.float64)
    linear = 3.0 * hz / 200.0
    log = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(hz >= 1000.0, log, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = 200.0 * mel / 3.0
    log = 1000.0 * np.exp((mel - 15.0) * (np.log(6.4) / 27.0))
    return np.where(mel >= 15.0, log, linear)


@lru_cache(maxsize=1)
def mel_filters() -> np.ndarray:
    """Slaney-normalised triangular mel filters, 0–8000 Hz: [N_MELS, N_FFT // 2 + 1] float64."""
    fft_hz = np.linspace(0.0, SAMPLE_RATE // 2, N_FFT // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(8000.0), N_MELS + 2))
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_hz - lower) / (center - lower)
    falling = (upper - fft_hz) / (upper - center)
    filters = np.maximum(0.0, np.minimum(rising, falling))
    # Slaney normalisation: divide by band width so each filter has equal area.
    filters *= 2.0 / (upper - lower)
    filters.flags.writeable = False
    return filters


def log_mel_frames(samples: np.ndarray) -> np.ndarray:
    """log10 mel power of every whole N_FFT frame at HOP_LENGTH in `samples`.

    No padding is added: frame t covers samples[t * HOP_LENGTH : t * HOP_LENGTH + N_FFT].
    Returns float32 [N_MELS, n_frames] (n_frames may be 0).
    """
    samples = np.asarray(samples, dtype=np.float64)
    if len(samples) < N_FFT:
        return np.empty((N_MELS, 0), dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(samples, N_FFT)[::HOP_LENGTH]
    n_frames = len(frames)
    window, filters = hann_window(), mel_filters()
    out = np.empty((N_MELS, n_frames), dtype=np.float32)
    for start in range(0, n_frames, _BLOCK_FRAMES):
        # float64 FFT: float32 loses the quiet bins that survive the 80 dB clamp.
        spectrum = np.fft.rfft(frames[start : start + _BLOCK_FRAMES] * window, axis=-1)
        power = spectrum.real**2 + spectrum.imag**2
        mel = filters @ power.T
        out[:, start : start + mel.shape[1]] = np.log10(np.maximum(mel, MEL_FLOOR))
    return out


def normalize_log_mel(log_mel: np.ndarray, maximum: float) -> np.ndarray:
    """Clamp to `maximum` - 8 and scale with (x + 4) / 4, in float32 like upstream."""
    floor = np.float32(maximum) - np.float32(DYNAMIC_RANGE)
    clamped = np.maximum(np.asarray(log_mel, dtype=np.float32), floor)
    return (clamped + np.float32(4.0)) / np.float32(4.0)


def log_mel_spectrogram(audio: np.ndarray) -> np.ndarray:
    """Whisper log-mel of a whole 16 kHz mono clip: float32 [N_MELS, len(audio) // HOP_LENGTH]."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise InputError(f"audio must be 1-D mono samples, got shape {audio.shape}")
    if audio.size == 0:
        raise InputError("audio is empty")
    if not np.issubdtype(audio.dtype, np.floating):
        raise InputError(f"audio must be float samples in [-1, 1], got dtype {audio.dtype}")
    if not np.isfinite(audio).all():
        raise InputError("audio contains NaN or Inf samples")
    n_frames = len(audio) // HOP_LENGTH
    if n_frames == 0:
        raise InputError(
            f"audio is too short: {len(audio)} samples, need at least {HOP_LENGTH} for one frame"
        )
    # center=True framing: reflect-pad N_FFT // 2 on each side, as transformers' spectrogram().
    padded = np.pad(audio.astype(np.float64), N_FFT // 2, mode="reflect")
    # Upstream computes one more frame and drops it; stop the padded signal before it instead.
    log_mel = log_mel_frames(padded[: (n_frames - 1) * HOP_LENGTH + N_FFT])
    return normalize_log_mel(log_mel, log_mel.max())


class LogMelStream:
    """Incremental log-mel of one stream window.

    Frames equal those of `log_mel_spectrogram` on the window's whole audio (reflect padding
    at both ends, the last frame dropped). Only the normalisation differs: the offline clamp
    uses the clip's global maximum, which a live front end cannot know; each block of frames
    is normalised with the maximum seen so far, including that block.
    """

    def __init__(self) -> None:
        self._audio = np.zeros(0, dtype=np.float64)
        self._done = 0  # frames handed out
        self.maximum = -np.inf

    @property
    def n_samples(self) -> int:
        return len(self._audio)

    @property
    def frames_done(self) -> int:
        return self._done

    def append(self, samples: np.ndarray) -> None:
        self._audio = np.concatenate([self._audio, np.asarray(samples, dtype=np.float64)])

    def _padded(self, final: bool) -> np.ndarray:
        half = N_FFT // 2
        head = self._audio[1:half + 1][::-1]  # np.pad(..., mode="reflect") at the start
        tail = self._audio[-half - 1:-1][::-1] if final else np.zeros(0)
        return np.concatenate([head, self._audio, tail])

    def ready_frames(self) -> int:
        """Frames computable now without knowing where the window ends."""
        return max(0, (self.n_samples - N_FFT // 2) // HOP_LENGTH + 1 - self._done)

    def take(self, n_frames: int, final: bool = False) -> np.ndarray:
        """The next `n_frames` normalised frames [N_MELS, n_frames]."""
        if self.n_samples <= N_FFT // 2:
            raise ValueError(f"a window needs more than {N_FFT // 2} samples")
        if n_frames <= 0:
            return np.zeros((N_MELS, 0), dtype=np.float32)
        start = self._done * HOP_LENGTH
        raw = log_mel_frames(self._padded(final)[start:start + (n_frames - 1) * HOP_LENGTH + N_FFT])
        self._done += raw.shape[1]
        self.maximum = max(self.maximum, float(raw.max()))
        return normalize_log_mel(raw, self.maximum)

    def finish(self) -> np.ndarray:
        """The remaining frames once the window has ended."""
        return self.take(self.n_samples // HOP_LENGTH - self._done, final=True)
