"""Live audio sources for streaming: a microphone, a file played at real-time pace, or any
iterator of numpy blocks. Each yields `Block`s of 16 kHz mono float32 samples.

The microphone callback only copies into a bounded queue: it never blocks, and what does
not fit is counted as dropped and reported, never lost silently.
"""
from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .audio import AudioError, load_audio, polyphase_filters
from .errors import InputError
from .features import SAMPLE_RATE


@dataclass
class Block:
    samples: np.ndarray  # 16 kHz mono float32
    captured_at: float  # time.monotonic() when the last sample arrived
    dropped_samples: int = 0  # input lost before this block (queue full), at 16 kHz
    xrun: bool = False  # PortAudio reported an input overflow or underflow (samples lost)


class StreamResampler:
    """Incremental form of `audio.resample`: the same filter, fed block by block, gives
    the same samples as resampling the whole signal at once."""

    def __init__(self, orig_sr: int, target_sr: int = SAMPLE_RATE):
        common = gcd(orig_sr, target_sr)
        self.up, self.down = target_sr // common, orig_sr // common
        self.bank, self.half = polyphase_filters(self.up, self.down)
        taps = self.bank.shape[1]
        self._buffer = np.zeros(taps - 1, dtype=np.float32)  # zeros before the signal, as offline
        self._base = -(taps - 1)  # input index of _buffer[0]
        self._received = 0
        self._next = 0  # index of the next output sample

    def _newest(self, n: np.ndarray | int):
        return (self.half + n * self.down) // self.up

    def _emit(self, available: int) -> np.ndarray:
        """Outputs whose newest input sample index is below `available`."""
        last = (available * self.up - 1 - self.half) // self.down  # largest n with newest < available
        if last < self._next:
            return np.zeros(0, dtype=np.float32)
        n = np.arange(self._next, last + 1)
        taps = self.bank.shape[1]
        windows = np.lib.stride_tricks.sliding_window_view(self._buffer, taps)
        rows = windows[self._newest(n) - taps + 1 - self._base]
        out = np.einsum("ij,ij->i", rows, self.bank[(self.half + n * self.down) % self.up]).astype(np.float32)
        self._next = last + 1
        keep_from = self._newest(self._next) - taps + 1 - self._base
        self._buffer = self._buffer[max(0, keep_from):]
        self._base += max(0, keep_from)
        return out

    def process(self, samples: np.ndarray) -> np.ndarray:
        if self.up == self.down:
            return np.asarray(samples, dtype=np.float32)
        self._buffer = np.concatenate([self._buffer, np.asarray(samples, dtype=np.float32)])
        self._received += len(samples)
        return self._emit(self._received)

    def flush(self) -> np.ndarray:
        """The remaining outputs, with zeros after the signal as the offline resampler uses."""
        total = -(-self._received * self.up // self.down)
        if self.up == self.down or total <= self._next:
            return np.zeros(0, dtype=np.float32)
        needed = self._newest(total - 1) + 1
        self._buffer = np.concatenate([self._buffer, np.zeros(max(0, needed - self._received), np.float32)])
        first = self._next
        return self._emit(needed)[: total - first]


def array_blocks(blocks: Iterable[np.ndarray], sample_rate: int = SAMPLE_RATE) -> Iterator[Block]:
    """Any iterator of mono float blocks at `sample_rate` (embedded apps, tests)."""
    resampler = StreamResampler(sample_rate)
    for samples in blocks:
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1 or not np.isfinite(samples).all():
            raise AudioError("stream blocks must be 1-D finite float samples")
        yield Block(resampler.process(samples), time.monotonic())
    tail = resampler.flush()
    if len(tail):
        yield Block(tail, time.monotonic())


def file_blocks(path: str | Path, realtime: bool = True, block_s: float = 0.1) -> Iterator[Block]:
    """A file as a live source; with `realtime`, blocks arrive at the pace of the audio."""
    audio = load_audio(path)
    step = int(block_s * SAMPLE_RATE)
    started = time.monotonic()
    for lo in range(0, len(audio), step):
        block = audio[lo:lo + step]
        if realtime:
            due = started + (lo + len(block)) / SAMPLE_RATE
            time.sleep(max(0.0, due - time.monotonic()))
        yield Block(block, time.monotonic())


class DeviceLost(RuntimeError):
    """The input device stopped delivering audio (unplugged, or its stream died)."""


def default_microphone() -> str | None:
    """The default input device's name, or None when there is none (or no PortAudio)."""
    try:
        import sounddevice as sd
    except (ImportError, OSError):  # OSError: the PortAudio library itself is missing
        return None
    try:
        return str(sd.query_devices(None, kind="input")["name"])
    except (ValueError, sd.PortAudioError):
        return None


def microphone_blocks(device: int | str | None = None, block_s: float = 0.1,
                      queue_seconds: float = 30.0, stall_timeout_s: float = 2.0,
                      startup_timeout_s: float = 10.0) -> Iterator[Block]:
    """Capture from a PortAudio input device at its native rate, resampled to 16 kHz.

    Ends by raising DeviceLost when no audio arrives for `stall_timeout_s` (the first block
    may take `startup_timeout_s`: sound servers can be slow to start a stream) or PortAudio
    reports the stream finished; the caller flushes what it has.
    """
    import sounddevice as sd  # the `mic` extra: imported only when a microphone is used

    try:
        info = sd.query_devices(device, kind="input")
    except ValueError as exc:  # PortAudio knows no such input device
        raise InputError(f"microphone {device!r}: {exc}") from None
    native_rate = int(info["default_samplerate"])
    frames_per_block = max(1, int(block_s * native_rate))
    blocks: queue.Queue = queue.Queue(maxsize=max(2, int(queue_seconds / block_s)))
    dropped = {"frames": 0, "xrun": False}

    def callback(indata, frames, time_info, status) -> None:  # PortAudio's thread: copy only
        if status.input_overflow or status.input_underflow:
            dropped["xrun"] = True
        try:
            blocks.put_nowait(indata.mean(axis=1, dtype=np.float32) if indata.shape[1] > 1 else indata[:, 0].copy())
        except queue.Full:
            dropped["frames"] += frames

    resampler = StreamResampler(native_rate)
    with sd.InputStream(device=device, channels=min(2, int(info["max_input_channels"])) or 1,
                        samplerate=native_rate, blocksize=frames_per_block, dtype="float32",
                        callback=callback) as stream:
        timeout = startup_timeout_s
        while True:
            try:
                samples = blocks.get(timeout=timeout)
            except queue.Empty:
                raise DeviceLost(f"input device {info['name']!r} delivered no audio for "
                                 f"{timeout:.0f} s") from None
            timeout = stall_timeout_s
            lost, xrun = dropped["frames"], dropped["xrun"]
            dropped["frames"], dropped["xrun"] = 0, False
            yield Block(resampler.process(samples), time.monotonic(),
                        dropped_samples=lost * SAMPLE_RATE // native_rate, xrun=xrun)
            if not stream.active:
                raise DeviceLost(f"input device {info['name']!r} stopped")
