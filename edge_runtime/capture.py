"""Live audio sources for streaming: a microphone, a file played at real-time pace, or any
iterator of numpy blocks. Each yields `Block`s of 16 kHz mono float32 samples.

A live source (the microphone, a paced file) runs on its own capture thread as a
`LiveCapture`: the thread only moves audio from the device into an `AudioSpool` (and the
recording), so a consumer that falls behind gets the audio late, never loses it. The
PortAudio callback only copies into a queue that this thread empties; only a device
overrun (`xrun`) or a starved capture thread (`dropped_s`) can lose input, and either is
reported (docs/streaming.md#falling-behind).
"""
from __future__ import annotations

import queue
import threading
import time
from math import gcd
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .audio import AudioError, load_audio, polyphase_filters
from .errors import InputError
from .features import SAMPLE_RATE
from .recording import WavRecorder
from .spool import AudioSpool, Block


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


def file_blocks(path: str | Path, realtime: bool = True, block_s: float = 0.1, speed: float = 1.0
                ) -> Iterator[Block]:
    """A file as a source; with `realtime`, blocks arrive at the pace of the audio (times
    `speed`), as from a microphone. Wrap a paced file in `LiveCapture` to capture it as one."""
    audio = load_audio(path)
    step = int(block_s * SAMPLE_RATE)
    started = time.monotonic()
    for lo in range(0, len(audio), step):
        block = audio[lo:lo + step]
        if realtime:
            due = started + (lo + len(block)) / SAMPLE_RATE / speed
            time.sleep(max(0.0, due - time.monotonic()))
        yield Block(block, time.monotonic())


class DeviceLost(RuntimeError):
    """The input device stopped delivering audio (unplugged, or its stream died)."""


class LiveCapture:
    """Iterate a live block source on a capture thread; iterating this hands the blocks out
    in order, however late. Up to `memory_s` seconds of backlog stay in memory, the rest
    waits in a temporary file (in `spool_dir`); `record` names a WAV file that receives
    every captured block as it arrives (recording.py). `stop()` ends the capture: what was
    captured before it is still handed out. An error of the source (DeviceLost, bad input)
    is raised after the audio captured before it."""

    def __init__(self, blocks: Iterator[Block], record: str | Path | None = None, memory_s: float = 30.0,
                 spool_dir: str | Path | None = None):
        self.recorder = WavRecorder(record) if record is not None else None  # a bad path fails now
        self.spool = AudioSpool(memory_s, spool_dir)
        self.captured_s = 0.0
        self._source = blocks
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._capture, name="moss-edge-capture", daemon=True)

    @property
    def backlog_s(self) -> float:
        """Seconds captured and not yet handed out."""
        return self.spool.backlog_s

    def _capture(self) -> None:
        error = None
        try:
            for block in self._source:
                if self.recorder is not None:
                    self.recorder.write(block.samples)
                self.spool.put(block)
                self.captured_s += len(block.samples) / SAMPLE_RATE
                if self._stopping.is_set():
                    break
        except BaseException as exc:  # handed to the consumer, after the audio before it
            error = exc
        finally:
            try:
                if hasattr(self._source, "close"):
                    self._source.close()  # in this thread, which runs the generator: releases the device
                if self.recorder is not None:
                    self.recorder.close()
            finally:
                self.spool.close(error)

    def __iter__(self) -> LiveCapture:
        return self

    def __next__(self) -> Block:
        if self._thread.ident is None:  # the device opens when the consumer is ready
            self._thread.start()
        block = self.spool.get()
        if block is None:
            raise StopIteration
        return block

    def stop(self) -> None:
        """End the capture at the next block; what was captured is still handed out."""
        self._stopping.set()

    def close(self) -> None:
        """Stop capturing, wait for the device to be released, and drop the backlog."""
        self.stop()
        if self._thread.ident is not None:
            self._thread.join()
        elif self.recorder is not None:
            self.recorder.close()
        self.spool.discard()


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


def microphone_blocks(device: int | str | None = None, block_s: float = 0.1, record: str | Path | None = None,
                      memory_s: float = 30.0, spool_dir: str | Path | None = None, **device_options) -> LiveCapture:
    """The microphone as a LiveCapture (nothing lost to a slow consumer); `device_options`
    are those of `device_blocks`."""
    return LiveCapture(device_blocks(device, block_s, **device_options), record, memory_s, spool_dir)


def device_blocks(device: int | str | None = None, block_s: float = 0.1, queue_seconds: float = 30.0,
                  stall_timeout_s: float = 2.0, startup_timeout_s: float = 10.0) -> Iterator[Block]:
    """Capture from a PortAudio input device at its native rate, resampled to 16 kHz.

    The callback's queue holds `queue_seconds`: it overflows (reported as dropped) only if
    nobody takes blocks for that long, which LiveCapture's thread always does. Ends by
    raising DeviceLost when no audio arrives for `stall_timeout_s` (the first block may take
    `startup_timeout_s`: sound servers can be slow to start a stream) or PortAudio reports
    the stream finished; the caller flushes what it has.
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
