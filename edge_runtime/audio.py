"""Audio input for the runtime: files, encoded bytes or arrays -> float32 mono at 16 kHz.

soundfile (libsndfile) decodes what it knows (WAV, FLAC, OGG, MP3), with the truncation
checks below and without loading FFmpeg; everything else FFmpeg reads (m4a/AAC, webm/Opus,
the audio track of mp4/mkv/mov video, ...) goes through PyAV. Downmixing and the
band-limited resampler are plain numpy, the same for both.
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

# libsndfile error codes that mean "not a format I read" (unrecognised format, unsupported
# encoding): such input goes to FFmpeg. Its other errors (a malformed WAV, a corrupt FLAC) stand.
_LIBSNDFILE_NOT_MINE = (1, 4)

# FFmpeg input decoding to this much less than its container declares is truncated; encoder
# priming and padding (AAC, Opus) move the decoded length by tens of milliseconds.
_TRUNCATION_SLACK_S = 0.25

# More channels than this means the array is most likely (channels, frames).
_MAX_CHANNELS = 32

# Raw PCM sample widths in bytes -> numpy types; 24-bit is widened to 32 (pcm_frames). 8-bit
# is signed, as in Python's audioop, which Wyoming's own converters use.
_PCM_TYPES = {1: np.dtype("i1"), 2: np.dtype("<i2"), 3: np.dtype("<i4"), 4: np.dtype("<i4")}

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
        if getattr(e, "code", None) in _LIBSNDFILE_NOT_MINE:
            stream.seek(0)
            return _decode_ffmpeg(stream, name, reason)
        raise AudioError(
            f"cannot decode {name} (unsupported format, corrupt or truncated): {reason}"
        ) from e
    if len(frames) < declared or (container in ("WAV", "WAVEX") and _wav_is_truncated(stream)):
        raise AudioError(
            f"{name} is truncated: its header promises more audio than the "
            f"{len(frames)} frames it holds"
        )
    return frames, rate


def _decode_ffmpeg(stream: BinaryIO, name: str, libsndfile_reason: str) -> tuple[np.ndarray, int]:
    """The first audio track of anything FFmpeg demuxes, as float32 [frames, channels]."""
    import av  # imported here: WAV/FLAC/OGG/MP3 never pay for loading FFmpeg

    try:
        with av.open(stream, mode="r") as container:
            track = next(iter(container.streams.audio), None)
            if track is None or track.codec_context is None:  # none, or none FFmpeg can decode
                raise AudioError(f"cannot decode {name} (unsupported format): FFmpeg reads it as "
                                 f"{container.format.long_name}, with no audio track it can decode")
            rate = track.rate
            # Planar float at the rate and layout the track starts with (a damaged frame may
            # claim others): the numpy code below downmixes and resamples, as for soundfile's.
            planar = av.AudioResampler(format="fltp", layout=track.layout, rate=rate)
            blocks = [converted.to_ndarray()
                      for frame in container.decode(track)
                      for converted in planar.resample(frame)]
            blocks += [converted.to_ndarray() for converted in planar.resample(None)]
            declared = _declared_seconds(container, track)
    except (av.FFmpegError, ValueError) as e:  # ValueError: PyAV on damaged headers (metadata, ...)
        raise AudioError(
            f"cannot decode {name} (unsupported format, corrupt or truncated): "
            f"libsndfile: {libsndfile_reason.rstrip('.')}; FFmpeg: {getattr(e, 'strerror', None) or e}"
        ) from e
    frames = np.concatenate(blocks, axis=1).T if blocks else np.zeros((0, 1), np.float32)
    if declared is not None and rate and declared - len(frames) / rate > _TRUNCATION_SLACK_S:
        raise AudioError(
            f"{name} is truncated: its header promises {declared:.2f} s of audio, "
            f"it holds {len(frames) / rate:.2f} s"
        )
    return np.ascontiguousarray(frames, dtype=np.float32), rate


def _declared_seconds(container, track) -> float | None:
    """The audio track's duration as its container states it (None where it doesn't)."""
    if track.duration is not None and track.time_base is not None:
        return float(track.duration * track.time_base)
    if container.duration is not None and len(container.streams) == 1:  # a video's may be longer
        return container.duration / 1_000_000  # AV_TIME_BASE: microseconds
    return None


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


def check_sample_rate(rate: object, name: str) -> int:
    """`rate` as an int, or an AudioError naming `name` when it is no usable rate."""
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)):
        raise AudioError(f"{name}: sample rate must be an integer number of Hz, got {rate!r}")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"{name}: sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
        )
    return int(rate)


def downmix(frames: np.ndarray) -> np.ndarray:
    """[frames, channels] float32 -> mono, the channels' mean."""
    return frames[:, 0] if frames.shape[1] == 1 else frames.mean(axis=1, dtype=np.float32)


def check_pcm_format(width: object, channels: object, name: str) -> None:
    """An AudioError naming `name` unless raw PCM of this width and channel count can be read."""
    if isinstance(width, bool) or width not in _PCM_TYPES:
        raise AudioError(f"{name}: sample width must be 1, 2, 3 or 4 bytes, got {width!r}")
    if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= _MAX_CHANNELS:
        raise AudioError(f"{name}: channels must be 1..{_MAX_CHANNELS}, got {channels!r}")


def pcm_frames(data: bytes, width: int, channels: int, name: str = "PCM audio") -> np.ndarray:
    """Raw little-endian signed PCM, `width` bytes a sample and `channels` interleaved (what
    Wyoming satellites send), as float32 [frames, channels] in [-1, 1]."""
    check_pcm_format(width, channels, name)
    if len(data) % (width * channels):
        raise AudioError(f"{name}: {len(data)} bytes are not whole frames of {channels} x {width} bytes")
    raw = np.frombuffer(data, np.uint8)
    if width == 3:  # each 24-bit sample into the top three bytes of an int32: same scale after
        wide = np.zeros((len(raw) // 3, 4), np.uint8)
        wide[:, 1:] = raw.reshape(-1, 3)
        raw = wide.reshape(-1)
    return _array_frames(raw.view(_PCM_TYPES[width]).reshape(-1, channels))


def _finish(frames: np.ndarray, rate: int, name: str) -> np.ndarray:
    """Validate [frames, channels] float32 audio, downmix it and bring it to 16 kHz."""
    rate = check_sample_rate(rate, name)
    if frames.size == 0:
        raise AudioError(f"{name} contains no audio samples")
    if not np.isfinite(frames).all():
        raise AudioError(f"{name} contains NaN or Inf samples")
    return np.ascontiguousarray(resample(downmix(frames), rate, SAMPLE_RATE))
