"""Home Assistant's voice pipeline over the Wyoming protocol: `moss-edge wyoming` (the `wyoming`
extra; docs/wyoming.md).

A client sends `transcribe`, `audio-start`, `audio-chunk`s and `audio-stop`. Each chunk, at
whatever rate, width and channel count the satellite records, becomes 16 kHz mono and goes
to the same exact incremental StreamingSession as `moss-edge listen` (stream.py): text the
session makes final while audio still arrives goes out at once as a `transcript-chunk`;
`audio-stop` closes the session, and its remaining text follows, then the whole text as
`transcript` and then `transcript-stop` (the order the protocol defines). The chunks joined
are the transcript. The bundle has one llama.cpp context: an utterance holds it from
`audio-start` to `audio-stop` and runs on the one worker thread; other connections wait.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import webrtcvad  # noqa: F401  vad.py's, imported when a session starts: missing, fail at start-up
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info
from wyoming.server import AsyncEventHandler, AsyncServer

from . import __version__
from .audio import AudioError, check_pcm_format, check_sample_rate, downmix, pcm_frames
from .capture import StreamResampler
from .errors import InputError
from .stream import StreamEvent
from .timestamps import join_text
from .transcribe import MossAudio

log = logging.getLogger("moss_edge")

PROJECT_URL = "https://github.com/OpenMOSS/MOSS-Audio"


@dataclass(frozen=True)
class WyomingConfig:
    model_id: str  # the model name `info` reports
    languages: tuple[str, ...] = ("en",)
    streaming: bool = True  # advertise and send transcript-start / -chunk / -stop


def describe(config: WyomingConfig) -> Info:
    """The `info` answer to `describe`: one ASR program with one model."""
    attribution = Attribution(name="OpenMOSS", url=PROJECT_URL)
    model = AsrModel(name=config.model_id, attribution=attribution, installed=True, version=__version__,
                     description="MOSS-Audio on the device (moss-audio-edge)", languages=list(config.languages))
    program = AsrProgram(name="moss-audio-edge", attribution=attribution, installed=True, version=__version__,
                         description="MOSS-Audio speech recognition, streamed incrementally", models=[model],
                         supports_transcript_streaming=config.streaming)
    return Info(asr=[program])


class Utterance:
    """One utterance's path: the satellite's PCM -> 16 kHz mono -> a streaming session. Its
    methods run on the worker thread and return the transcript text each call adds."""

    def __init__(self, model: MossAudio, start: AudioStart):
        self.rate = check_sample_rate(start.rate, "audio-start")
        self.width, self.channels = start.width, start.channels
        check_pcm_format(self.width, self.channels, "audio-start")
        self.resampler = StreamResampler(self.rate)
        self.session = model.stream_session("sentence")
        self.finals: list[str] = []

    @property
    def text(self) -> str:
        return join_text(self.finals)

    def feed(self, chunk: AudioChunk) -> str:
        if (chunk.rate, chunk.width, chunk.channels) != (self.rate, self.width, self.channels):
            raise AudioError(f"audio-chunk is {chunk.rate} Hz x {chunk.width} bytes x {chunk.channels} "
                             f"channels, audio-start said {self.rate} x {self.width} x {self.channels}")
        frames = pcm_frames(chunk.audio, self.width, self.channels, "audio-chunk")
        return self._add(self.session.feed(self.resampler.process(downmix(frames))))

    def finish(self) -> str:
        return self._add(self.session.feed(self.resampler.flush()) + self.session.finish())

    def _add(self, events: list[StreamEvent]) -> str:
        """The text that the final events append to the transcript (partials may still change)."""
        before = self.text
        self.finals += [event.text for event in events if event.type == "final"]
        return self.text[len(before):]


class TranscriptionHandler(AsyncEventHandler):
    """One client connection."""

    def __init__(self, model: MossAudio, config: WyomingConfig, engine_lock: asyncio.Lock,
                 worker: ThreadPoolExecutor, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model, self.config, self.engine_lock, self.worker = model, config, engine_lock, worker
        self.language: str | None = None
        self.utterance: Utterance | None = None

    async def handle_event(self, event: Event) -> bool:
        try:
            if Describe.is_type(event.type):
                await self.write_event(describe(self.config).event())
            elif Transcribe.is_type(event.type):
                self.language = Transcribe.from_event(event).language
            elif AudioStart.is_type(event.type):
                await self._start(AudioStart.from_event(event))
            elif AudioChunk.is_type(event.type) and self.utterance is not None:
                await self._chunk(await self._run(self.utterance.feed, AudioChunk.from_event(event)))
            elif AudioStop.is_type(event.type) and self.utterance is not None:
                await self._stop()
        except InputError as exc:  # bad audio from this client: it hears why, the server serves on
            await self._drop()
            await self.write_event(Error(text=str(exc), code="bad-audio").event())
        except ConnectionError:  # the client went away while we wrote to it
            await self._drop()
            return False
        except Exception:  # a bug: logged with its traceback, this client told and let go
            log.exception("wyoming: %s failed unexpectedly (a bug: please report it)", event.type)
            await self._drop()
            await self.write_event(Error(text=f"internal error handling {event.type}", code="internal").event())
            return False
        return True  # other events (ping, wake, tts, ...) are not ours: dropped, as the protocol says

    async def _start(self, start: AudioStart) -> None:
        await self._drop()  # a new audio-start without audio-stop abandons the last utterance
        await self.engine_lock.acquire()
        try:
            self.utterance = await self._run(Utterance, self.model, start)
        except BaseException:
            self.engine_lock.release()
            raise
        if self.config.streaming:
            await self.write_event(TranscriptStart(language=self._language()).event())

    async def _chunk(self, text: str) -> None:
        if text and self.config.streaming:
            await self.write_event(TranscriptChunk(text=text).event())

    async def _stop(self) -> None:
        await self._chunk(await self._run(self.utterance.finish))
        text = self.utterance.text
        await self._drop()
        await self.write_event(Transcript(text=text, language=self._language()).event())
        if self.config.streaming:
            await self.write_event(TranscriptStop().event())

    async def _drop(self) -> None:
        """Let go of the utterance and the engine (its session's context is simply reused)."""
        if self.utterance is not None:
            self.utterance = None
            self.engine_lock.release()

    async def _run(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self.worker, partial(function, *args))

    def _language(self) -> str:
        return self.language or self.config.languages[0]

    async def disconnect(self) -> None:
        await self._drop()  # a client gone mid-utterance frees the engine for the next


async def serve(model: MossAudio, config: WyomingConfig, uri: str) -> None:
    """Answer Wyoming clients at `uri` (tcp://HOST:PORT, unix://PATH or stdio://) until stopped."""
    try:
        server = AsyncServer.from_uri(uri)
    except ValueError as exc:
        raise InputError(f"--uri {uri!r}: {exc}") from None
    engine_lock = asyncio.Lock()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="moss-wyoming") as worker:
        try:
            await server.run(partial(TranscriptionHandler, model, config, engine_lock, worker))
        except OSError as exc:  # binding: the port is taken, the address is not this machine's, ...
            raise InputError(f"cannot listen at {uri}: {exc.strerror or exc}") from None
