"""Every audio file people have: m4a/AAC, webm/Opus, MP3 and the audio track of an mp4 video,
made here from espeak-ng speech (encoded_audio.py), decode close to the WAV they came from;
the nano model transcribes them; broken ones are one clean AudioError."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from cli_helpers import assert_bad_input, moss_edge
from encoded_audio import ENCODINGS, M4A, MP4_VIDEO, WEBM, Encoding, encode

from edge_runtime.audio import AudioError, load_audio
from edge_runtime.features import SAMPLE_RATE
from edge_runtime.speech import speak
from edge_runtime.transcribe import MossAudio

COMMAND = "turn on the kitchen lights"
# Lossy codecs at their default bit rates keep espeak-ng's speech this close to the WAV.
MIN_CORRELATION = 0.98
MAX_LEVEL_DB = 1.0
# AAC's encoder delay (1024 samples at 22.05 kHz) is left in the m4a by the muxer: 46 ms.
MAX_EXTRA_S = 0.1


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speak(COMMAND, tmp_path_factory.mktemp("formats") / "command.wav")


@pytest.fixture(scope="module")
def pcm(wav: Path) -> tuple[np.ndarray, int]:
    samples, rate = sf.read(wav, dtype="int16")
    return samples, rate


@pytest.fixture(scope="module")
def encoded(pcm: tuple[np.ndarray, int]) -> dict[str, bytes]:
    return {e.name: encode(*pcm, e) for e in ENCODINGS}


def _aligned(audio: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`audio` shifted by the lag that best lines it up with `reference` (codec delays)."""
    n = min(len(audio), len(reference))
    lag = int(np.correlate(audio[:n], reference[:n], "full").argmax()) - (n - 1)
    shifted = audio[lag:] if lag >= 0 else np.concatenate([np.zeros(-lag, np.float32), audio])
    return shifted[:len(reference)]


def _level_db(audio: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(audio, dtype=np.float64)) + 1e-30))


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name + ("-video" if e.video else ""))
def test_decoded_speech_is_close_to_the_wav(wav: Path, encoded: dict[str, bytes], encoding: Encoding,
                                            tmp_path: Path):
    reference = load_audio(wav)
    path = tmp_path / f"command.{encoding.name}"
    path.write_bytes(encoded[encoding.name])
    audio = load_audio(path)
    np.testing.assert_array_equal(load_audio(path.read_bytes()), audio)  # bytes: the server's uploads
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0 <= (len(audio) - len(reference)) / SAMPLE_RATE <= MAX_EXTRA_S
    aligned = _aligned(audio, reference)
    assert np.corrcoef(aligned[:len(reference)], reference[:len(aligned)])[0, 1] >= MIN_CORRELATION
    assert abs(_level_db(audio) - _level_db(reference)) <= MAX_LEVEL_DB


def test_stereo_m4a_is_averaged(pcm: tuple[np.ndarray, int], wav: Path):
    samples, rate = pcm
    left_only = np.stack([samples, np.zeros_like(samples)], axis=1)
    audio = load_audio(encode(left_only, rate, M4A))
    # One silent channel halves the amplitude: -6 dB.
    assert abs(_level_db(audio) - (_level_db(load_audio(wav)) - 20 * np.log10(2))) <= MAX_LEVEL_DB


def test_nano_transcribes_an_m4a_from_the_command_line(encoded: dict[str, bytes], tmp_path: Path):
    path = tmp_path / "voice-memo.m4a"
    path.write_bytes(encoded["m4a"])
    result = moss_edge("transcribe", "nano", str(path), "--threads", "2")
    assert result.returncode == 0, result.stderr
    assert COMMAND in result.stdout.lower(), result.stdout


def test_nano_transcribes_the_audio_track_of_a_video(encoded: dict[str, bytes]):
    model = MossAudio("nano", threads=2)
    try:
        segments, _ = model.transcribe(encoded["mp4"])
        assert COMMAND in " ".join(s.text for s in segments).lower()
    finally:
        model.close()


# --- broken files: one clean AudioError each -------------------------------------------------

@pytest.mark.parametrize("data", [b"", b"0123456789" * 4, bytes(range(256)) * 8, b"ftypM4A " * 64,
                                  b"\x1aE\xdf\xa3" + b"\0" * 200],
                         ids=["empty", "text", "noise", "m4a-magic", "webm-magic"])
def test_garbage_is_refused(data: bytes):
    with pytest.raises(AudioError, match=r"cannot decode audio data .*Format not recognised; FFmpeg: "):
        load_audio(data)


@pytest.mark.parametrize("encoding", [M4A, WEBM, MP4_VIDEO], ids=lambda e: e.name)
def test_truncated_file_is_refused(encoded: dict[str, bytes], encoding: Encoding, tmp_path: Path):
    # m4a/mp4 keep their index (moov) at the end, so a cut one cannot be opened; webm states
    # its duration up front, so a cut one decodes short of it.
    path = tmp_path / f"cut.{encoding.name}"
    path.write_bytes(encoded[encoding.name][: len(encoded[encoding.name]) // 2])
    with pytest.raises(AudioError, match=r"cut\.\w+ (\(unsupported format, corrupt or truncated\)|is truncated)"):
        load_audio(path)


@pytest.mark.parametrize("encoding", [M4A, WEBM], ids=lambda e: e.name)
def test_damaged_files_decode_or_raise_audio_error(encoded: dict[str, bytes], encoding: Encoding):
    """Bytes overwritten here and there, cut anywhere or a span scrambled: FFmpeg may still
    decode such a file (a player would), but nothing but AudioError may come out of it. (Found:
    damaged metadata, a track FFmpeg has no decoder for, a frame claiming another layout.)"""
    rng = np.random.default_rng(0)
    original = encoded[encoding.name]
    for trial in range(60):
        damaged = bytearray(original)
        if trial % 3 == 0:
            damaged[rng.integers(0, len(damaged))] ^= 0xFF
            for position in rng.integers(0, len(damaged), 20):
                damaged[position] = rng.integers(0, 256)
        elif trial % 3 == 1:
            damaged = damaged[: rng.integers(1, len(damaged))]
        else:
            start = rng.integers(0, len(damaged))
            damaged[start:start + 200] = rng.integers(0, 256, 200).astype(np.uint8).tobytes()
        try:
            audio = load_audio(bytes(damaged))
        except AudioError:
            continue
        assert audio.dtype == np.float32 and np.isfinite(audio).all()


def test_video_without_audio_is_refused(tmp_path: Path):
    path = tmp_path / "silent-film.mp4"
    path.write_bytes(encode(np.zeros(0, np.int16), SAMPLE_RATE, MP4_VIDEO, video_s=1.0))
    with pytest.raises(AudioError, match=r"silent-film\.mp4 \(unsupported format\): .*, with no audio track"):
        load_audio(path)


def test_unreadable_file_on_the_command_line(tmp_path: Path):
    path = tmp_path / "notes.m4a"
    path.write_text("these are not samples\n")
    assert_bad_input(moss_edge("transcribe", "nano", str(path)), "cannot decode", "notes.m4a")
