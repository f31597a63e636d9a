"""What `moss-edge batch` tells: a progress bar on a terminal (a line per file otherwise), the
summary line at the end, and OUT/moss-edge-batch.summary.json with every input's outcome and
the reason of each failure (docs/batch.md#progress-and-summary)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TextIO

from .staging import write_atomic

SUMMARY_NAME = "moss-edge-batch.summary.json"
BAR_WIDTH = 24
REDRAW_S = 0.2


class BatchReport:
    def __init__(self, files: int, expected_s: float, stream: TextIO = sys.stderr):
        """`expected_s`: the header lengths of the files to transcribe, for the ETA."""
        self.files, self.stream = files, stream
        self.live = stream.isatty()
        self.started = time.monotonic()
        self.inputs: list[dict] = []
        self.counts = {"done": 0, "skipped": 0, "failed": 0}
        self.audio_s = 0.0  # of the files transcribed in this run
        self.expected_left_s = expected_s  # what is left of it
        self.crashed = False  # a worker hit a bug (exit 1)
        self._drawn = 0.0

    def skipped(self, name: str, audio_s: float) -> None:
        self._add(name, "skipped", audio_s=audio_s)

    def done(self, name: str, audio_s: float, expected_s: float, attempts: int, worker_deaths: int,
             outputs: list[str]) -> None:
        self.audio_s += audio_s
        self.expected_left_s = max(0.0, self.expected_left_s - expected_s)
        self._add(name, "done", audio_s=round(audio_s, 3), attempts=attempts, worker_deaths=worker_deaths,
                  outputs=outputs)
        if not self.live:
            self._line(f"[{self._finished()}/{self.files}] {name}: {audio_s:.1f} s of audio")

    def failed(self, name: str, reason: str, expected_s: float, attempts: int, worker_deaths: int,
               crash: bool = False) -> None:
        self.crashed |= crash
        self.expected_left_s = max(0.0, self.expected_left_s - expected_s)
        self._add(name, "failed", reason=reason, attempts=attempts, worker_deaths=worker_deaths)
        self._line(f"error: {name}: {reason}")

    def tick(self) -> None:
        """Redraw the bar (on a terminal), at most every REDRAW_S."""
        if self.live and time.monotonic() - self._drawn >= REDRAW_S:
            self._drawn = time.monotonic()
            self.stream.write("\r" + self._bar())
            self.stream.flush()

    def write(self, output_dir: Path, interrupted: bool, workers: int, settings: dict) -> None:
        """The summary line on the stream and the summary JSON in `output_dir`."""
        wall = time.monotonic() - self.started
        rtf = round(wall / self.audio_s, 4) if self.audio_s else None
        if self.live:
            self.stream.write("\r" + " " * (len(self._bar()) + 8) + "\r")
        stopped = " (interrupted: rerun to finish)" if interrupted else ""
        self._line(f"{self.files} files: {self.counts['done']} done, {self.counts['skipped']} skipped, "
                   f"{self.counts['failed']} failed{stopped}; {self.audio_s / 3600:.3f} h of audio in {wall:.1f} s"
                   + (f" (RTF {rtf})" if rtf is not None else ""))
        summary = {"files": self.files, **self.counts, "interrupted": interrupted,
                   "audio_hours": round(self.audio_s / 3600, 5), "wall_s": round(wall, 2), "rtf": rtf,
                   "workers": workers, "settings": settings, "inputs": self.inputs}
        output_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(output_dir / SUMMARY_NAME, json.dumps(summary, ensure_ascii=False, indent=2) + "\n")

    def _add(self, name: str, status: str, **fields) -> None:
        self.counts[status] += 1
        self.inputs.append({"input": name, "status": status, **fields})
        self.tick()

    def _finished(self) -> int:
        return sum(self.counts.values())

    def _bar(self) -> str:
        finished = self._finished()
        filled = BAR_WIDTH * finished // max(self.files, 1)
        elapsed = time.monotonic() - self.started
        rtf = elapsed / self.audio_s if self.audio_s else None
        eta = "?" if rtf is None else _clock(rtf * self.expected_left_s)
        return (f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {finished}/{self.files} files, "
                f"{self.audio_s / 3600:.3f} h audio, RTF {'?' if rtf is None else f'{rtf:.3f}'}, ETA {eta}")

    def _line(self, text: str) -> None:
        if self.live:  # above the bar, which is redrawn below it
            text = "\r" + text + " " * max(0, len(self._bar()) - len(text))
        print(text, file=self.stream, flush=True)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"
