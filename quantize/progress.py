"""Progress lines for the long steps of quantization (minutes each at 4B)."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

Log = Callable[[str], None]
HEARTBEAT_S = 15.0  # a step with no count of its own still says it is alive this often
COUNT_EVERY_S = 2.0


@contextmanager
def step(log: Log, label: str, timings: dict[str, float], key: str) -> Iterator[Callable[[int, int], None]]:
    """Log the start and end of a step, a heartbeat while it runs, and record its wall time in
    `timings[key]`. Yields `count(done, total)` for steps that can say how far they are."""
    started = time.perf_counter()
    last = {"t": started}
    finished = threading.Event()
    log(f"{label} ...")

    def count(done: int, total: int) -> None:
        now = time.perf_counter()
        if done == total or now - last["t"] >= COUNT_EVERY_S:
            last["t"] = now
            log(f"  {label}: {done}/{total} ({100 * done // max(total, 1)}%, {now - started:.0f} s)")

    def heartbeat() -> None:
        while not finished.wait(HEARTBEAT_S):
            if time.perf_counter() - last["t"] >= HEARTBEAT_S:
                log(f"  {label}: {time.perf_counter() - started:.0f} s")

    beat = threading.Thread(target=heartbeat, daemon=True)
    beat.start()
    try:
        yield count
    finally:
        finished.set()
        beat.join()
    timings[key] = round(time.perf_counter() - started, 2)
    log(f"{label}: done in {timings[key]:.1f} s")
