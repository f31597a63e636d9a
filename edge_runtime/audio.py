"""Audio input for the runtime: files, encoded bytes or arrays -> float32 mono at 16 kHz.

Decoding is soundfile's (libsndfile: WAV, FLAC, OGG, MP3, ...); downmixing and the
band-limited resampler are plain numpy so the runtime needs nothing else.
"""

import io
import os
import struct
from functools import lru_cache
from math import gcd
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

from .errors import InputError
from .features import SAMPLE_RATE

MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384000

# Resampler design: Kaiser-windowed sinc with 32 zero crossings each side. The cutoff
# sits at 94.5% of the lower Nyquist: 16 kHz output is flat to 7 kHz, and what lies above
# ~8.2 kHz is down 80 dB or more before it can alias.
_ZERO_CROSSINGS = 32
_ROLLOFF = 0.945
_KAISER_BETA = 8.6

# WAV data sizes from here up are placeholders left by streaming writers (see _wav_is_truncated).
_WAV_SIZE_PLACEHOLDER = 0x7FFF0000

# More channels than this means the array is most likely (channels, frames).
_MAX_CHANNELS = 32

AudioSource = str | os.PathLike | bytes | bytearray | np.ndarray


class AudioError(InputError):
    """Audio that cannot be used: missing, undecodable, truncated, empty or non-finite."""


def load_audio(source: AudioSource, sample_rate: int | None = None) -> np.ndarray:
    """Return `source` as float32 mono samples at 16 kHz.

    `source` is a file path, the bytes of an encoded file, or an array of samples
    ([frames] or [frames, channels]; float in [-1, 1] or integer PCM). `sample_rate` is
    only for arrays, which are taken to be 16 kHz without it; files carry their own.
    """
    if isinstance(source, np.ndarray):
        rate = SAMPLE_RATE if sample_rate is None else sample_rate
        return _finish(_array_frames(source), rate, "audio array")
    if sample_rate is not None:
        raise InputError("sample_rate applies only to numpy arrays; files carry their own rate")
    if isinstance(source, (bytes, bytearray)):
        name = f"audio data ({len(source)} bytes)"
        frames, rate = _decode(io.BytesIO(source), name)
        return _finish(frames, rate, name)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise AudioError(f"audio file not found: {path}")
        name = f"audio file {path}"
        with open(path, "rb") as stream:
            frames, rate = _decode(stream, name)
        return _finish(frames, rate, name)
    raise TypeError(f"expected a path, bytes or numpy array, got {type(source).__name__}")


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited polyphase resampling of 1-D audio from `orig_sr` to `target_sr` Hz."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise AudioError(f"resample expects 1-D audio, got shape {audio.shape}")
    if orig_sr == target_sr or len(audio) == 0:
        return audio
    common = gcd(orig_sr, target_sr)
    up, down = target_sr // common, orig_sr // common
    bank, half = polyphase_filters(up, down)
    taps = bank.shape[1]
    n_out = -(-len(audio) * up // down)
    # Output n sits at position n * down of the signal upsampled by `up`; its newest
    # input sample is (half + n * down) // up and its filter phase (half + n * down) % up.
    newest = (half + (n_out - 1) * down) // up
    padded = np.concatenate(
        [
            np.zeros(taps - 1, np.float32),
            audio,
            np.zeros(max(0, newest + 1 - len(audio)), np.float32),
        ]
    )
    # windows[i] holds input samples i - taps + 1 .. i (a view, nothing copied).
    windows = np.lib.stride_tricks.sliding_window_view(padded, taps)
    out = np.empty(n_out, np.float32)
    for first in range(min(up, n_out)):
        # Outputs first, first + up, ... share one phase and step `down` inputs apart.
        position = half + first * down
        dest = out[first::up]
        dest[:] = windows[position // up :: down][: len(dest)] @ bank[position % up]
    return out


@lru_cache(maxsize=16)
def polyphase_filters(up: int, down: int) -> tuple[np.ndarray, int]:
    """Low-pass filter at the upsampled rate split into `up` phases.

    Returns (bank, half): bank[p] holds the taps of phase p in reverse order, so a dot
    product with ascending input samples applies it; half is the filter's centre tap.
    """
    ratio = max(up, down)
    half = int(np.ceil(_ZERO_CROSSINGS * ratio / _ROLLOFF))
    cutoff = _ROLLOFF / ratio  # as a fraction of the upsampled Nyquist
    n = np.arange(-half, half + 1)
    # Gain `up` makes up for the zeros that upsampling inserts between samples.
    kernel = up * cutoff * np.sinc(cutoff * n) * np.kaiser(2 * half + 1, _KAISER_BETA)
    taps = -(-len(kernel) // up)
    flat = np.zeros(taps * up)
    flat[: len(kernel)] = kernel
    bank = np.ascontiguousarray(flat.reshape(taps, up).T[:, ::-1], dtype=np.float32)
    bank.flags.writeable = False
    return bank, half


def _array_frames(array: np.ndarray) -> np.ndarray:
    """Caller's array as float32 [frames, channels], integer PCM scaled to [-1, 1]."""
    if array.ndim == 1:
        array = array[:, None]
    elif array.ndim != 2:
        raise AudioError(
            f"audio array must be [frames] or [frames, channels], got shape {array.shape}"
        )
    if array.shape[1] > _MAX_CHANNELS:
        raise AudioError(
            f"audio array of shape {array.shape} has {array.shape[1]} channels; "
            "pass [frames, channels] (transpose a [channels, frames] array)"
        )
    if np.issubdtype(array.dtype, np.signedinteger):
        return (array / float(-np.iinfo(array.dtype).min)).astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32, copy=False)
    raise AudioError(
        f"audio array must hold float or signed integer samples, got dtype {array.dtype}"
    )


def _decode(stream: BinaryIO, name: str) -> tuple[np.ndarray, int]:
    try:
        with sf.SoundFile(stream) as f:
            frames = f.read(dtype="float32", always_2d=True)
            declared, rate, container = f.frames, f.samplerate, f.format
    except sf.SoundFileError as e:
        reason = getattr(e, "error_string", str(e))
        raise AudioError(
            f"cannot decode {name} (unsupported format, corrupt or truncated): {reason}"
        ) from e
    if len(frames) < declared or (container in ("WAV", "WAVEX") and _wav_is_truncated(stream)):
        raise AudioError(
            f"{name} is truncated: its header promises more audio than the "
            f"{len(frames)} frames it holds"
        )
    return frames, rate


def _wav_is_truncated(stream: BinaryIO) -> bool:
    """Whether the RIFF data chunk declares more bytes than the file holds.

    libsndfile silently shortens such files to what is there. Writers that stream to a
    pipe don't know the size and leave a placeholder (0xFFFFFFFF, espeak-ng's
    0x7FFFF000, ...): sizes from 2 GiB up are taken as unknown, not truncated.
    """
    total = stream.seek(0, io.SEEK_END)
    stream.seek(0)
    header = stream.read(12)
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:] != b"WAVE":
        return False  # RF64, RIFX, ...: leave them to libsndfile
    while len(chunk := stream.read(8)) == 8:
        chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if chunk_id == b"data":
            return size < _WAV_SIZE_PLACEHOLDER and total - stream.tell() < size
        stream.seek(size + (size & 1), io.SEEK_CUR)  # chunks are padded to even length
    return False


def _finish(frames: np.ndarray, rate: int, name: str) -> np.ndarray:
    """Validate [frames, channels] float32 audio, downmix it and bring it to 16 kHz."""
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)):
        raise AudioError(f"{name}: sample rate must be an integer number of Hz, got {rate!r}")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"{name}: sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
        )
    if frames.size == 0:
        raise AudioError(f"{name} contains no audio samples")
    if not np.isfinite(frames).all():
        raise AudioError(f"{name} contains NaN or Inf samples")
    mono = frames[:, 0] if frames.shape[1] == 1 else frames.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(resample(mono, int(rate), SAMPLE_RATE))
