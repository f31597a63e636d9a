"""log_mel_spectrogram against transformers' WhisperFeatureExtractor(feature_size=128)."""

import numpy as np
import pytest
from transformers import WhisperFeatureExtractor
from transformers.audio_utils import mel_filter_bank

from edge_runtime.features import (
    HOP_LENGTH,
    N_FFT,
    N_MELS,
    SAMPLE_RATE,
    log_mel_frames,
    log_mel_spectrogram,
    mel_filters,
    normalize_log_mel,
)

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def extractor() -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor(feature_size=N_MELS)


def _reference(extractor: WhisperFeatureExtractor, audio: np.ndarray) -> np.ndarray:
    # The numpy path of the extractor, the definition in docs/format.md#log-mel-front-end, without 30 s padding.
    return extractor._np_extract_fbank_features(audio[None], device="cpu")[0]


def _speech_like(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Harmonics of a gliding pitch under a syllable-rate envelope, with pauses."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 140.0 + 30.0 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 30) if k * 170 < 7500)
    syllables = np.clip(np.sin(2 * np.pi * 4.0 * t), 0.0, None)
    envelope = syllables * (np.sin(2 * np.pi * 0.3 * t) > -0.5)
    return 0.2 * voice * envelope + 1e-3 * rng.standard_normal(len(t))


def _signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    t3 = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    return {
        "noise": 0.1 * rng.standard_normal(48_123),
        "chirp": 0.5 * np.sin(2 * np.pi * (50.0 * t3 + (7900.0 - 50.0) / 6.0 * t3**2)),
        "speech_like": _speech_like(5.3, rng),
        "very_short": 0.3 * rng.standard_normal(1000),
        "one_frame": 0.3 * rng.standard_normal(HOP_LENGTH),
        "long_31s": _speech_like(31.0, rng)[: 31 * SAMPLE_RATE - 77],
        "float32": (0.1 * rng.standard_normal(20_011)).astype(np.float32),
        "silence_then_tone": np.r_[np.zeros(8000), 0.1 * np.sin(0.3 * np.arange(8000))],
        "quiet": 1e-5 * rng.standard_normal(16_000),
        "full_scale": np.clip(3.0 * rng.standard_normal(16_000), -1.0, 1.0),
    }


@pytest.mark.parametrize("name", sorted(_signals()))
def test_matches_transformers(extractor: WhisperFeatureExtractor, name: str) -> None:
    audio = _signals()[name]
    ours = log_mel_spectrogram(audio)
    reference = _reference(extractor, audio)
    assert ours.dtype == np.float32
    assert ours.shape == (N_MELS, len(audio) // HOP_LENGTH) == reference.shape
    assert np.abs(ours - reference).max() <= TOLERANCE


def test_mel_filters_match_transformers() -> None:
    reference = mel_filter_bank(
        num_frequency_bins=N_FFT // 2 + 1,
        num_mel_filters=N_MELS,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )
    np.testing.assert_allclose(mel_filters(), reference.T, rtol=1e-12, atol=1e-15)


def test_frames_do_not_depend_on_how_the_signal_is_split() -> None:
    # A streaming front end computes frames piecewise; pieces that overlap by
    # N_FFT - HOP_LENGTH samples must give the same frames as one pass.
    audio = np.random.default_rng(7).standard_normal(5000 * HOP_LENGTH)
    whole = log_mel_frames(audio)
    cut = 2500 * HOP_LENGTH
    first, second = log_mel_frames(audio[: cut + N_FFT - HOP_LENGTH]), log_mel_frames(audio[cut:])
    pieces = np.concatenate([first, second], axis=1)
    assert whole.shape == (N_MELS, 1 + (len(audio) - N_FFT) // HOP_LENGTH)
    np.testing.assert_allclose(pieces, whole, rtol=0, atol=1e-6)


def test_log_mel_frames_of_a_tone_peak_in_the_right_band() -> None:
    tone = np.sin(2 * np.pi * 1000.0 * np.arange(N_FFT * 4) / SAMPLE_RATE)
    frames = log_mel_frames(tone)
    peak_band = int(frames.mean(axis=1).argmax())
    centre_hz = mel_filters()[peak_band].argmax() * SAMPLE_RATE / N_FFT
    assert abs(centre_hz - 1000.0) <= 2 * SAMPLE_RATE / N_FFT
    assert log_mel_frames(tone[: N_FFT - 1]).shape == (N_MELS, 0)


def test_normalize_uses_the_given_maximum() -> None:
    log_mel = np.array([[0.5, -2.0, -12.0]], dtype=np.float32)
    np.testing.assert_array_equal(normalize_log_mel(log_mel, 0.5), [[1.125, 0.5, -0.875]])
    # A streaming caller passes a running maximum larger than this block's.
    np.testing.assert_array_equal(normalize_log_mel(log_mel, 2.0), [[1.125, 0.5, -0.5]])
    assert normalize_log_mel(log_mel, 0.5).dtype == np.float32


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        (np.zeros(0), "empty"),
        (np.zeros((2, 16000)), "1-D"),
        (np.r_[np.zeros(1000), np.nan], "NaN or Inf"),
        (np.r_[np.zeros(1000), np.inf], "NaN or Inf"),
        (np.zeros(16000, dtype=np.int16), "float"),
        (np.zeros(HOP_LENGTH - 1), "too short"),
    ],
)
def test_rejects_bad_audio(audio: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        log_mel_spectrogram(audio)
