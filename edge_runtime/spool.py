"""Captured audio waiting for a slow consumer: kept in memory up to a bound, the excess
spilled to a temporary file and handed back in arrival order, so that falling behind costs
lag, never audio (docs/streaming.md#falling-behind).
"""
from __future__ import annotations

import os
import struct
import tempfile
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .features import SAMPLE_RATE


@dataclass
class Block:
    samples: np.ndarray  # 16 kHz mono float32
    captured_at: float  # time.monotonic() when the last sample arrived
    dropped_samples: int = 0  # input lost before this block (the device queue overflowed), at 16 kHz
    xrun: bool = False  # PortAudio reported an input overflow or underflow (samples lost)
    spooled_s: float = 0.0  # audio waiting in the spool file when this block was handed out


# a block on disk: captured_at, samples, dropped_samples, xrun; then the float32 samples
_RECORD = struct.Struct("<dqq?")


class AudioSpool:
    """A FIFO of Blocks between a capture thread (`put`, `close`) and a consumer (`get`).

    Up to `memory_s` seconds wait in memory. Past that, blocks are appended to an unnamed
    temporary file (nothing is left behind, even after a crash) until the reader has caught
    up with it; the file is then emptied. Memory thus stays bounded however far behind the
    consumer is, and disk use is the backlog itself.
    """

    def __init__(self, memory_s: float = 30.0, directory: str | Path | None = None):
        self.memory_limit = int(memory_s * SAMPLE_RATE)
        self.directory = directory
        self._memory: deque[Block] = deque()
        self._memory_samples = 0
        self._file = None  # created at the first spill
        self._write_at = self._read_at = 0  # byte offsets of the next record to write / read
        self._disk_samples = 0
        self._closed = False
        self._error: BaseException | None = None
        self._ready = threading.Condition()

    @property
    def spooled_s(self) -> float:
        """Seconds of audio waiting in the file."""
        return self._disk_samples / SAMPLE_RATE

    @property
    def backlog_s(self) -> float:
        """Seconds of audio captured and not yet handed out."""
        return (self._memory_samples + self._disk_samples) / SAMPLE_RATE

    def put(self, block: Block) -> None:
        samples = np.ascontiguousarray(block.samples, dtype=np.float32)
        with self._ready:
            # once anything is on disk, newer audio follows it there: the order is kept
            if self._disk_samples == 0 and self._memory_samples + len(samples) <= self.memory_limit:
                self._memory.append(block)
                self._memory_samples += len(samples)
            else:
                self._spill(block, samples)
            self._ready.notify()

    def _spill(self, block: Block, samples: np.ndarray) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="moss-edge-spool-", dir=self.directory)
        record = _RECORD.pack(block.captured_at, len(samples), block.dropped_samples, block.xrun)
        self._write_at += os.pwrite(self._file.fileno(), record + samples.tobytes(), self._write_at)
        self._disk_samples += len(samples)

    def _unspill(self) -> Block:
        fd = self._file.fileno()
        captured_at, n, dropped, xrun = _RECORD.unpack(os.pread(fd, _RECORD.size, self._read_at))
        data = os.pread(fd, 4 * n, self._read_at + _RECORD.size)
        self._read_at += _RECORD.size + 4 * n
        self._disk_samples -= n
        if self._read_at == self._write_at:  # caught up: give the disk space back
            os.ftruncate(fd, 0)
            self._read_at = self._write_at = 0
        return Block(np.frombuffer(data, dtype=np.float32).copy(), captured_at, dropped, xrun)

    def close(self, error: BaseException | None = None) -> None:
        """No more blocks; `error` (a lost device, unreadable input) is raised by `get` once
        everything before it has been handed out."""
        with self._ready:
            self._closed, self._error = True, error
            self._ready.notify()

    def get(self, timeout: float = 0.5) -> Block | None:
        """The oldest block (waiting for one), or None at the end; raises the error `close`
        was given after the last block. `timeout` only bounds each wait, so that signals
        such as Ctrl-C are handled while the consumer idles."""
        with self._ready:
            while not self._memory and not self._disk_samples:
                if self._closed:
                    if self._error is not None:
                        error, self._error = self._error, None
                        raise error
                    return None
                self._ready.wait(timeout)
            if self._memory:
                block = self._memory.popleft()
                self._memory_samples -= len(block.samples)
            else:
                block = self._unspill()
            block.spooled_s = self._disk_samples / SAMPLE_RATE
            return block

    def discard(self) -> None:
        """Drop whatever is still waiting and delete the file."""
        with self._ready:
            self._memory.clear()
            self._memory_samples = self._disk_samples = 0
            if self._file is not None:
                self._file.close()
                self._file = None
            self._read_at = self._write_at = 0
