"""Single-flight inference for the server: one worker thread runs one job at a time.

A llama.cpp context is not thread-safe, so every request's work (load, encode, prefill,
generate) runs on the same thread, in arrival order. At most `max_queue` jobs wait behind the
running one. A job hands its items (segments, answer deltas) to the event loop one by one and
checks between them whether its request gave up (timeout, client gone), so a cancelled job
stops at the next token or segment.

Jobs that can share the model's parallel sequences (transcriptions with the same options) carry
a `together` key: the worker takes the waiting jobs with the job's key along with it, up to
`together_max`, and hands them to `run_together` as one batch.
"""
from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Hashable, Iterable, Iterator


class QueueFull(Exception):
    """As many jobs as allowed are running or waiting."""


class QueueTimeout(TimeoutError):
    """The deadline passed while the job was still waiting for the worker."""


class RunTimeout(TimeoutError):
    """The deadline passed while the job was running."""


_READY, _END = object(), object()


@dataclass
class _Failure:
    error: BaseException


class Job:
    """Work running on the inference thread, handing its items to the event loop one by one.

    `setup` runs it alone; a job run in a batch is instead driven by the batch's runner
    through `begin`, `put`, `finish` and `fail`, with `payload` as its input."""

    def __init__(self, loop: asyncio.AbstractEventLoop, setup: Callable[[], Iterable[Any]], timeout_s: float,
                 together: Hashable | None = None, payload: Any = None):
        self._loop = loop
        self._setup = setup
        self._items: asyncio.Queue[Any] = asyncio.Queue()
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.together = together
        self.payload = payload
        self.started = False
        self.cancelled = threading.Event()

    def _send(self, item: Any) -> None:
        self._loop.call_soon_threadsafe(self._items.put_nowait, item)

    # --- the inference thread's side ---------------------------------------------------------

    def begin(self) -> None:
        """The input is accepted: the request may start its response."""
        self.started = True
        self._send(_READY)

    def put(self, item: Any) -> bool:
        """Hand over one item; False (and nothing sent) once the request gave up, or failed
        it because its time is up."""
        if self.cancelled.is_set():
            return False
        if time.monotonic() > self.deadline:
            self.fail(TimeoutError())
            return False
        self._send(item)
        return True

    def finish(self) -> None:
        self.put(_END)

    def fail(self, error: BaseException) -> None:
        """The request gets `error` (its kind maps to a status) in place of what was to come."""
        self._send(_Failure(error))

    def run(self) -> None:
        """Alone: set up (load, encode, prefill), then produce items until the request gives up."""
        if self.cancelled.is_set():
            return
        self.started = True
        items: Iterator[Any] | None = None
        try:
            items = iter(self._setup())
            self.begin()
            for item in itertools.chain(items, [_END]):
                if not self.put(item):
                    return
        except BaseException as exc:  # handed to the request, which maps it to a status
            self.fail(exc)
        finally:
            getattr(items, "close", lambda: None)()

    # --- the request's side ------------------------------------------------------------------

    async def next(self) -> Any:
        try:
            item = await asyncio.wait_for(self._items.get(), max(0.0, self.deadline - time.monotonic()))
        except asyncio.TimeoutError:
            item = _Failure(TimeoutError())
        if isinstance(item, _Failure):
            self.cancelled.set()
            if isinstance(item.error, TimeoutError):
                raise (RunTimeout if self.started else QueueTimeout)(self.timeout_s) from None
            raise item.error
        return item

    async def start(self) -> None:
        """Wait for the set-up: errors in the input surface here, before any response is sent."""
        await self.next()

    async def items(self) -> AsyncIterator[Any]:
        try:
            while (item := await self.next()) is not _END:
                yield item
        finally:
            self.cancelled.set()  # the client went away or the response is complete


class SingleFlight:
    """One worker thread for all inference; at most `max_queue` jobs wait behind the running one.
    `run_together(jobs)` runs a batch of waiting jobs with the same `together` key (at most
    `together_max`), on the worker thread; without it every job runs alone."""

    def __init__(self, max_queue: int, run_together: Callable[[list[Job]], None] | None = None,
                 together_max: int = 1):
        self._limit = max_queue + 1
        self._run_together = run_together
        self._together_max = together_max if run_together else 1
        self._waiting: deque[Job] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="moss-edge-inference", daemon=True)
        self._worker.start()
        self.jobs = 0  # running and waiting
        self.batches = 0  # how many times jobs ran together

    def submit(self, setup: Callable[[], Iterable[Any]], timeout_s: float, together: Hashable | None = None,
               payload: Any = None) -> Job:
        job = Job(asyncio.get_running_loop(), setup, timeout_s, together, payload)
        with self._changed:
            if self.jobs >= self._limit:
                raise QueueFull(self.jobs)
            self.jobs += 1
            self._waiting.append(job)
            self._changed.notify()
        return job

    def _next_batch(self) -> list[Job] | None:
        """The oldest waiting job, and the waiting jobs it may run together with."""
        with self._changed:
            while not self._waiting and not self._closed:
                self._changed.wait()
            if self._closed:
                return None
            batch = [self._waiting.popleft()]
            if batch[0].together is not None:
                for job in list(self._waiting):
                    if len(batch) == self._together_max:
                        break
                    if job.together == batch[0].together and not job.cancelled.is_set():
                        self._waiting.remove(job)
                        batch.append(job)
            return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                if len(batch) == 1:
                    batch[0].run()
                else:
                    self.batches += 1
                    self._run_together(batch)
            except BaseException as exc:  # the runner's own failure: every request hears of it
                for job in batch:
                    job.fail(exc)
            finally:
                with self._changed:
                    self.jobs -= len(batch)

    def shutdown(self) -> None:
        """Stop taking jobs: the running one finishes, the waiting ones are dropped."""
        with self._changed:
            self._closed = True
            self.jobs -= len(self._waiting)
            self._waiting.clear()
            self._changed.notify()
