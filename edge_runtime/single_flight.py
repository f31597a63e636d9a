"""Single-flight inference for the server: one worker thread runs one job at a time.

A llama.cpp context is not thread-safe, so every request's work (load, encode, prefill,
generate) runs on the same thread, in arrival order. At most `max_queue` jobs wait behind the
running one. A job hands its items (segments, answer deltas) to the event loop one by one and
checks between them whether its request gave up (timeout, client gone), so a cancelled job
stops at the next token or segment.
"""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Iterable, Iterator


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
    """Work running on the inference thread, handing its items to the event loop one by one."""

    def __init__(self, loop: asyncio.AbstractEventLoop, setup: Callable[[], Iterable[Any]], timeout_s: float):
        self._loop = loop
        self._setup = setup
        self._items: asyncio.Queue[Any] = asyncio.Queue()
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.started = False
        self.cancelled = threading.Event()

    def _put(self, item: Any) -> None:
        self._loop.call_soon_threadsafe(self._items.put_nowait, item)

    def run(self) -> None:
        """On the inference thread: set up (load, encode, prefill), then produce items, checking
        between them whether the request was given up."""
        if self.cancelled.is_set():
            return
        self.started = True
        items: Iterator[Any] | None = None
        try:
            items = iter(self._setup())
            self._put(_READY)
            while not self.cancelled.is_set():
                if time.monotonic() > self.deadline:
                    raise TimeoutError
                item = next(items, _END)
                self._put(item)
                if item is _END:
                    return
        except BaseException as exc:  # handed to the request, which maps it to a status
            self._put(_Failure(exc))
        finally:
            getattr(items, "close", lambda: None)()

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
    """One worker thread for all inference; at most `max_queue` jobs wait behind the running one."""

    def __init__(self, max_queue: int):
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="moss-edge-inference")
        self._lock = threading.Lock()
        self._limit = max_queue + 1
        self.jobs = 0

    def submit(self, setup: Callable[[], Iterable[Any]], timeout_s: float) -> Job:
        with self._lock:
            if self.jobs >= self._limit:
                raise QueueFull(self.jobs)
            self.jobs += 1
        job = Job(asyncio.get_running_loop(), setup, timeout_s)
        self._executor.submit(self._run, job)
        return job

    def _run(self, job: Job) -> None:
        try:
            job.run()
        finally:
            with self._lock:
                self.jobs -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
