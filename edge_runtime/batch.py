"""Batch transcription on Ray: workers that each hold a loaded model, and the loop that hands
them files and survives their deaths (docs/batch.md). Needs the `batch` extra (ray).

Each worker is a Ray actor that loads the bundle once. The driver reads every file itself and
ships its bytes, so workers on other machines need the bundle but not the archive, and the
ledger's content hash is that of exactly what was transcribed. A worker holds at most
PENDING_PER_WORKER files (one running, one waiting so it never idles on the driver); files
go out longest first so the last ones to finish are short. A worker that dies (killed, out of
memory) is restarted by Ray; the file it was running is retried on another worker, the one
waiting behind it is requeued without blame, and a file that was running when
MAX_WORKER_DEATHS workers died is failed rather than retried forever.
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import ray
import soundfile as sf
from ray.exceptions import ActorDiedError, RayActorError, RayTaskError

from .batch_inputs import BatchInput
from .batch_ledger import Fingerprint, read_input
from .errors import InputError
from .timestamps import Segment
from .transcribe import MossAudio

PENDING_PER_WORKER = 2
MAX_WORKER_DEATHS = 2
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20  # only files in flight pass through it: a few per worker
WAIT_S = 0.5  # how often the loop wakes without a result: progress redraws, Ctrl-C is prompt


@dataclass
class Transcribed:
    segments: list[Segment]
    duration: float  # seconds of audio
    finish_reasons: list[str]  # why each window's decoding ended


@dataclass
class Failed:
    reason: str
    crash: bool = False  # not the input's fault: a bug in a worker (exit 1, not 3)


@dataclass
class Job:
    item: BatchInput
    expected_s: float  # from the file's header (0 if unreadable): sorts the queue, feeds the ETA
    attempts: int = 0
    worker_deaths: int = 0
    died_on: set[int] = field(default_factory=set)  # worker indexes, avoided on the retry
    fingerprint: Fingerprint | None = None  # of the bytes last sent


@dataclass
class _InFlight:
    ref: ray.ObjectRef
    job: Job


class TranscribeWorker:
    """A Ray actor (made remote in start_workers): one loaded model, many files."""

    def __init__(self, load_model: Callable[[], MossAudio], options: dict):
        self.model = load_model()
        self.options = options

    def transcribe(self, data: bytes) -> Transcribed | Failed:
        try:
            segments, info = self.model.transcribe(data, **self.options)
            done = list(segments)
        except InputError as exc:  # this file is unusable; the worker goes on with the next
            return Failed(str(exc))
        return Transcribed(done, info.duration, info.finish_reasons)

    def ready(self) -> bool:
        """Answers once the worker (restarted after a death) has its model loaded again."""
        return True


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Join the cluster at `address`, or (None) start a small local instance of our own; on
    leaving, a local instance is stopped, and on a cluster our workers go."""
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}  # workers' llama.cpp logs stay in Ray's
    try:
        if address is None:
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES, **quiet)
        else:
            try:
                ray.init(address=address, **quiet)
            except ConnectionError as exc:
                raise InputError(f"cannot join the Ray cluster at {address}: {exc}") from exc
        yield
    finally:
        ray.shutdown()


def start_workers(count: int | None, threads: int, load_model: Callable[[], MossAudio],
                  options: dict) -> list:
    """`count` workers (default: as many as the cluster's CPUs hold) of `threads` CPUs each.
    More than fit is refused: the extra ones would never start and their files never finish."""
    cpus = int(ray.cluster_resources().get("CPU", 0))
    fit = cpus // threads
    count = fit if count is None else count
    if count < 1 or count > fit:
        raise InputError(f"the Ray cluster has {cpus} CPUs: it holds 1 to {fit} workers of {threads} "
                         f"threads (asked: {count}); change --workers or --threads-per-worker")
    # Ray restarts a dead worker (reloading the bundle); retrying its file is ours to decide
    actor = ray.remote(num_cpus=threads, max_restarts=-1, max_task_retries=0)(TranscribeWorker)
    return [actor.remote(load_model, options) for _ in range(count)]


def expected_seconds(item: BatchInput) -> float:
    """The audio's length from its header, without decoding; 0 when it cannot be read (the
    worker then says why)."""
    try:
        return sf.info(str(item.path)).duration
    except (RuntimeError, OSError):  # libsndfile's errors are RuntimeErrors
        return 0.0


def run_jobs(workers: list, jobs: list[Job], on_result: Callable[[Job, Transcribed | Failed], None],
             on_wait: Callable[[], None]) -> None:
    """Transcribe every job on `workers`, reporting each exactly once through `on_result`
    (in the order they finish). `on_wait` is called whenever no result came for WAIT_S."""
    queue = deque(sorted(jobs, key=lambda j: -j.expected_s))
    in_flight: list[deque[_InFlight]] = [deque() for _ in workers]
    restarting = _Restarts(workers)
    while queue or any(in_flight):
        for index, worker in enumerate(workers):
            while index in restarting.usable() and len(in_flight[index]) < PENDING_PER_WORKER:
                job = _next_job(queue, index, restarting.alive())
                if job is None:
                    break
                sent = _submit(worker, job)
                if isinstance(sent, Failed):
                    on_result(job, sent)
                else:
                    in_flight[index].append(_InFlight(sent, job))
        refs = [entry.ref for pending in in_flight for entry in pending] + restarting.refs()
        if not refs:  # every worker is between two restart probes
            time.sleep(WAIT_S)
        if not refs or not ray.wait(refs, num_returns=1, timeout=WAIT_S)[0]:
            on_wait()
            continue
        done = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0])
        restarting.check(done)
        for index, pending in enumerate(in_flight):
            # a worker runs its files in order, so its oldest is the one that was running
            while pending and pending[0].ref in done:
                entry = pending.popleft()
                try:
                    result = ray.get(entry.ref)
                except RayActorError:  # the worker died: blame the file it ran, requeue the rest
                    job = entry.job
                    job.worker_deaths += 1
                    job.died_on.add(index)
                    queue.extendleft(waiting.job for waiting in reversed(pending))
                    pending.clear()
                    if job.worker_deaths >= MAX_WORKER_DEATHS:
                        on_result(job, Failed(f"{job.worker_deaths} workers died transcribing it "
                                              "(killed or out of memory); not retried again"))
                    else:
                        queue.appendleft(job)  # first in line, for another worker
                    restarting.add(index)
                    break
                except RayTaskError as exc:  # a bug in the worker: this file fails, the batch goes on
                    result = Failed(f"unexpected error in the worker: {exc}", crash=True)
                on_result(entry.job, result)


class _Restarts:
    """Workers that died and that Ray is restarting. Calls to one fail at once until it is back
    (it reloads the bundle), so it gets no file until a `ready` probe answers; a worker Ray
    gave up on is dropped, and the batch fails only when none is left."""

    def __init__(self, workers: list):
        self.workers = workers
        self.probes: dict[int, ray.ObjectRef] = {}
        self.retry_at: dict[int, float] = {}  # a probe that failed is sent again from then
        self.gone: set[int] = set()

    def add(self, index: int) -> None:
        self.probes[index] = self.workers[index].ready.remote()

    def alive(self) -> set[int]:
        return set(range(len(self.workers))) - self.gone

    def usable(self) -> set[int]:
        return self.alive() - set(self.probes) - set(self.retry_at)

    def refs(self) -> list[ray.ObjectRef]:
        for index, due in list(self.retry_at.items()):
            if time.monotonic() >= due:
                del self.retry_at[index]
                self.add(index)
        return list(self.probes.values())

    def check(self, done: set[ray.ObjectRef]) -> None:
        for index, probe in list(self.probes.items()):
            if probe not in done:
                continue
            del self.probes[index]
            try:
                ray.get(probe)
            except ActorDiedError:
                self.gone.add(index)
                if len(self.gone) == len(self.workers):
                    raise RuntimeError("every batch worker died for good; the finished files are kept") from None
            except RayActorError:  # still restarting
                self.retry_at[index] = time.monotonic() + WAIT_S


def _next_job(queue: deque[Job], worker: int, alive: set[int]) -> Job | None:
    """The first queued job that has not already died on this worker, unless every worker
    still alive has had it die on them."""
    for job in queue:
        if worker not in job.died_on or alive <= job.died_on:
            queue.remove(job)
            return job
    return None


def _submit(worker, job: Job) -> ray.ObjectRef | Failed:
    try:
        data, job.fingerprint = read_input(job.item.path)
    except OSError as exc:
        return Failed(f"cannot read {job.item.name}: {exc.strerror or exc}")
    job.attempts += 1
    # the task's name becomes the worker's process title: `ps` shows which file each runs
    return worker.transcribe.options(name=f"transcribe {job.item.name}").remote(data)
