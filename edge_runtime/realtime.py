"""OpenAI Realtime transcription over a WebSocket: `GET /v1/realtime?intent=transcription`.

The subset of OpenAI's Realtime API that transcription clients speak (docs/realtime.md), in
front of the same `StreamingSession` as `moss-edge listen`: voice activity, chunk-at-a-time KV
appends, drafts and commits are that session's; this module only turns client events into
audio and turns, and the session's events into server events. Each connection's work runs
as jobs on the server's single inference thread (single_flight.py), one job per connection at
a time, each taking every client event that arrived since the previous one; HTTP requests
queue between them. A session whose window lost the context to another job evaluates it
again from its kept encoder rows (stream.py's `_reclaim`).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Iterator

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from .audio import AudioError, pcm_frames
from .capture import StreamResampler
from .engine import Sampling
from .errors import InputError
from .features import SAMPLE_RATE
from .prompt import ANSWER_TOKENS
from .single_flight import QueueFull, SingleFlight
from .stream import StreamEvent, StreamingSession
from .timestamps import join_text
from .transcribe import MossAudio
from .vad import VadConfig

log = logging.getLogger("moss_edge")
PCM_RATES = (24000, 16000)  # OpenAI's pcm16 is 24 kHz; 16 kHz is the model's own rate
KEY_SUBPROTOCOL = "openai-insecure-api-key."  # how browsers, which cannot set headers, send the key
RETRY_S = 0.05  # a full inference queue is asked again this often


@dataclass(frozen=True)
class RealtimeLimits:
    max_sessions: int = 1  # open WebSockets; later ones are refused
    max_message_bytes: int = 2**20  # one client event, base64 audio included
    max_session_s: float = 4 * 3600.0  # audio one session may send
    max_backlog_s: float = 30.0  # audio waiting for the model before the session is ended


class RealtimeError(InputError):
    """A client event refused: sent back as an `error` event in OpenAI's shape."""

    def __init__(self, message: str, code: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.code, self.param, self.kind = message, code, param, kind

    def event(self, event_id: str | None = None) -> dict:
        return {"type": "error", "error": {"type": self.kind, "code": self.code, "message": self.message,
                                           "param": self.param, "event_id": event_id}}


@dataclass(frozen=True)
class SessionSettings:
    sample_rate: int = 24000
    vad: VadConfig | None = VadConfig()  # None: turn_detection null, the client commits
    threshold: float = 0.5  # as the client gave it (mapped to WebRTC's aggressiveness)
    speech_pad_s: float = 0.3
    timestamps: str = "sentence"  # "word" with timestamp_granularities ["word"]
    language: str | None = None

    def describe(self, session_id: str, model_id: str) -> dict:
        turns = None if self.vad is None else {
            "type": "server_vad", "threshold": self.threshold, "prefix_padding_ms": round(self.speech_pad_s * 1000),
            "silence_duration_ms": round(self.vad.min_silence_s * 1000)}
        return {"id": session_id, "object": "realtime.transcription_session", "modalities": ["text"],
                "input_audio_format": "pcm16" if self.sample_rate == 24000
                else {"type": "audio/pcm", "rate": self.sample_rate},
                "input_audio_transcription": {
                    "model": model_id, "language": self.language,
                    "timestamp_granularities": ["word" if self.timestamps == "word" else "segment"]},
                "turn_detection": turns, "input_audio_noise_reduction": None}


def _milliseconds(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 10_000:
        raise RealtimeError(f"{name} must be a number of milliseconds from 0 to 10000, got {value!r}",
                            "invalid_value", name)
    return value / 1000


def read_settings(session: Any, current: SessionSettings) -> SessionSettings:
    """`session.update` / `transcription_session.update`: the beta shape (input_audio_format,
    input_audio_transcription, turn_detection at the top) or the GA one (under audio.input)."""
    if not isinstance(session, dict):
        raise RealtimeError("`session` must be an object", "invalid_value", "session")
    audio_input = session.get("audio", {}).get("input", {}) if isinstance(session.get("audio"), dict) else {}
    audio_input = audio_input if isinstance(audio_input, dict) else {}
    settings = current
    fmt = session.get("input_audio_format", audio_input.get("format"))
    if fmt is not None:
        rate = 24000 if fmt == "pcm16" else fmt.get("rate", 24000) if isinstance(fmt, dict) and \
            fmt.get("type") in ("audio/pcm", "pcm16") else None
        if rate not in PCM_RATES:
            raise RealtimeError(f"input_audio_format {fmt!r}: only pcm16 (24 kHz) or "
                                "{\"type\": \"audio/pcm\", \"rate\": 16000|24000} is served",
                                "unsupported_audio_format", "session.input_audio_format")
        settings = replace(settings, sample_rate=rate)
    if "turn_detection" in session or "turn_detection" in audio_input:
        turns = session["turn_detection"] if "turn_detection" in session else audio_input["turn_detection"]
        if turns is None:
            settings = replace(settings, vad=None)
        elif isinstance(turns, dict) and turns.get("type", "server_vad") == "server_vad":
            threshold = turns.get("threshold", 0.5)
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
                raise RealtimeError(f"turn_detection.threshold must be from 0 to 1, got {threshold!r}",
                                    "invalid_value", "session.turn_detection.threshold")
            vad = VadConfig(aggressiveness=min(3, int(threshold * 4)),
                            min_silence_s=_milliseconds(turns.get("silence_duration_ms", 600),
                                                        "session.turn_detection.silence_duration_ms"))
            pad = _milliseconds(turns.get("prefix_padding_ms", 300), "session.turn_detection.prefix_padding_ms")
            settings = replace(settings, vad=vad, threshold=float(threshold), speech_pad_s=pad)
        else:
            raise RealtimeError(f"turn_detection {turns!r}: only server_vad or null is served",
                                "unsupported_turn_detection", "session.turn_detection")
    transcription = session.get("input_audio_transcription", audio_input.get("transcription"))
    if isinstance(transcription, dict):
        if transcription.get("prompt"):
            raise RealtimeError("`prompt` is not supported by this model", "unsupported_prompt",
                                "session.input_audio_transcription.prompt")
        granularities = transcription.get("timestamp_granularities") or []
        settings = replace(settings, language=transcription.get("language") or None,
                           timestamps="word" if "word" in granularities else "sentence")
    noise = session.get("input_audio_noise_reduction", audio_input.get("noise_reduction"))
    if noise is not None:
        raise RealtimeError("input_audio_noise_reduction is not supported: send null", "unsupported_noise_reduction",
                            "session.input_audio_noise_reduction")
    return settings


def pcm16_samples(data: Any) -> np.ndarray:
    """Base64 little-endian 16-bit mono PCM -> float32 samples in [-1, 1)."""
    if not isinstance(data, str):
        raise RealtimeError("`audio` must be a base64 string of 16-bit PCM", "invalid_value", "audio")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RealtimeError("`audio` is not valid base64", "invalid_value", "audio") from None
    try:
        return pcm_frames(raw, 2, 1, "`audio`")[:, 0]
    except AudioError as exc:  # not whole 16-bit samples
        raise RealtimeError(str(exc), "invalid_value", "audio") from None


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


class _Item:
    """One turn's transcript as it grows: the finals so far and the text already sent as deltas."""

    def __init__(self, first_window: int, previous: str | None):
        self.id = _new_id("item")
        self.previous = previous
        self.first_window = first_window  # index into session.closed_windows
        self.finals: list[StreamEvent] = []
        self.sent = ""

    def text(self, partial: str = "") -> str:
        return join_text([e.text for e in self.finals] + [partial])


class _Transcriber:
    """The session's state on the inference thread: runs client operations through the
    StreamingSession and turns its events into server events."""

    def __init__(self, model: MossAudio, settings: SessionSettings):
        self.session: StreamingSession = model.stream_session(settings.timestamps, vad=settings.vad,
                                                              speech_pad_s=settings.speech_pad_s)
        self.item: _Item | None = None
        self.last_item: str | None = None

    def run(self, operations: list[tuple]) -> Iterator[dict]:
        for name, *args in operations:
            try:
                if name == "audio":
                    samples, received_at = args
                    events = self.session.feed(samples, lag_s=max(0.0, time.monotonic() - received_at))
                    yield from self._translate(events)
                    if self.item is None and self.session.window is not None:
                        self._open()  # no voice detection: a turn starts with its first audio
                elif name == "commit":
                    yield from self._commit()
                elif name == "clear":
                    self.session.discard()
                    self.item = None
                    yield {"type": "input_audio_buffer.cleared"}
                elif name == "ask":
                    yield from self._ask(*args)
            except RealtimeError as error:
                yield error.event(args[0] if name != "audio" else None)

    def _open(self) -> None:
        self.item = _Item(len(self.session.closed_windows), self.last_item)

    def _translate(self, events: list[StreamEvent]) -> Iterator[dict]:
        for event in events:
            if event.type == "status" and event.info.get("vad") == "speech":
                if self.item is None:
                    self._open()
                    yield {"type": "input_audio_buffer.speech_started", "item_id": self.item.id,
                           "audio_start_ms": round(event.info["at"] * 1000), "audio_start_s": event.info["at"]}
            elif event.type == "status" and event.info.get("vad") == "silence" and self.item is not None:
                yield {"type": "input_audio_buffer.speech_stopped", "item_id": self.item.id,
                       "audio_end_ms": round(event.info["at"] * 1000), "audio_end_s": event.info["at"]}
                yield from self._complete()
            elif event.type in ("partial", "final"):
                if self.item is None:
                    self._open()
                item = self.item
                if event.type == "final":
                    item.finals.append(event)
                text = item.text(event.text if event.type == "partial" else "")
                # OpenAI's deltas only append; a revised partial sends "" and its whole `text`
                delta = text[len(item.sent):] if text.startswith(item.sent) else ""
                item.sent += delta
                yield {"type": "conversation.item.input_audio_transcription.delta", "item_id": item.id,
                       "content_index": 0, "delta": delta, "text": text, "final": event.type == "final",
                       "start": event.start, "end": event.end}

    def _commit(self) -> Iterator[dict]:
        if self.item is None and self.session.window is not None:
            self._open()
        if self.item is None:
            raise RealtimeError("the input audio buffer is empty: append audio before committing",
                                "input_audio_buffer_commit_empty")
        yield from self._translate(self.session.finish())
        yield from self._complete()

    def _complete(self) -> Iterator[dict]:
        item, self.item = self.item, None
        self.last_item = item.id
        windows = self.session.closed_windows[item.first_window:]
        yield {"type": "input_audio_buffer.committed", "item_id": item.id, "previous_item_id": item.previous}
        timed = [e for e in item.finals if e.timed]
        yield {"type": "conversation.item.input_audio_transcription.completed", "item_id": item.id,
               "content_index": 0, "transcript": item.text(),
               "start": timed[0].start if timed else None, "end": timed[-1].end if timed else None,
               "segments": [{k: v for k, v in e.to_dict().items() if k != "type"} for e in item.finals],
               "audio_start_s": windows[0][0] / SAMPLE_RATE if windows else None,
               "audio_end_s": windows[-1][1] / SAMPLE_RATE if windows else None}

    def _ask(self, event_id: str | None, question: str, max_tokens: int) -> Iterator[dict]:
        response_id, item_id = _new_id("resp"), _new_id("item")
        try:
            stream = self.session.ask_stream(question, max_tokens=max_tokens, sampling=Sampling())
        except InputError as exc:
            raise RealtimeError(str(exc), "no_audio") from None
        yield {"type": "response.created", "response": {"id": response_id, "object": "realtime.response",
                                                       "status": "in_progress", "output": []}}
        where = {"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0}
        for delta in stream:
            if delta.kind == "answer":
                yield {"type": "response.text.delta", **where, "delta": delta.text}
        answer = stream.answer
        yield {"type": "response.text.done", **where, "text": answer.text}
        output_tokens = len(answer.token_ids)
        yield {"type": "response.done", "response": {
            "id": response_id, "object": "realtime.response",
            "status": "completed" if answer.finish_reason == "stop" else "incomplete",
            "status_details": None if answer.finish_reason == "stop" else {"reason": answer.finish_reason},
            "output": [{"id": item_id, "type": "message", "role": "assistant",
                        "content": [{"type": "text", "text": answer.text}]}],
            "usage": {"input_tokens": answer.prompt_tokens, "output_tokens": output_tokens,
                      "total_tokens": answer.prompt_tokens + output_tokens},
            "timings": answer.timings}}


class _Connection:
    """One client: reads its events, queues operations, and drives them through jobs."""

    def __init__(self, service: RealtimeService, websocket: WebSocket):
        self.service = service
        self.websocket = websocket
        self.id = _new_id("sess")
        self.settings = SessionSettings()
        self.transcriber: _Transcriber | None = None  # made on the inference thread with the first job
        self.resampler: StreamResampler | None = None
        self.operations: list[tuple] = []
        self.waiting = asyncio.Event()
        self.queued_samples = 0
        self.received_samples = 0
        self.sending = asyncio.Lock()

    async def send(self, event: dict) -> None:
        async with self.sending:
            await self.websocket.send_text(json.dumps({"event_id": _new_id("event"), **event}))

    async def refuse(self, error: RealtimeError, close_code: int) -> None:
        await self.send(error.event())
        await self.websocket.close(close_code, error.code)

    async def run(self) -> None:
        await self.send({"type": "session.created", "session": self.settings.describe(self.id, self.service.model_id)})
        driver = asyncio.create_task(self._drive())
        try:
            while not driver.done():
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text") if message.get("text") is not None else message.get("bytes") or b""
                event: Any = None
                try:
                    if len(text) > self.service.limits.max_message_bytes:
                        raise RealtimeError(f"event of {len(text)} bytes; the limit is "
                                            f"{self.service.limits.max_message_bytes}: send audio in smaller "
                                            "appends", "message_too_large")
                    try:
                        event = json.loads(text)
                    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                        raise RealtimeError(f"event is not valid JSON ({exc})", "invalid_json") from None
                    if not isinstance(event, dict):
                        raise RealtimeError("an event must be a JSON object with a `type`", "invalid_event")
                    await self._handle(event)
                except RealtimeError as error:
                    await self.send(error.event(event.get("event_id") if isinstance(event, dict) else None))
                    if error.code in ("session_limit_reached", "falling_behind"):
                        await self.websocket.close(1008, error.code)
                        return
        except WebSocketDisconnect:
            return
        finally:
            driver.cancel()  # cancels a running job at its next event: the session is freed now

    async def _handle(self, event: dict) -> None:
        kind, event_id = event.get("type"), event.get("event_id")
        if kind in ("session.update", "transcription_session.update"):
            settings = read_settings(event.get("session"), self.settings)
            if settings != self.settings and (self.received_samples or self.transcriber is not None):
                raise RealtimeError("the audio format, turn detection and timestamps are fixed once audio "
                                    "has been appended: open a new session", "session_locked", "session")
            self.settings = settings
            await self.send({"type": kind.replace(".update", ".updated"),
                             "session": settings.describe(self.id, self.service.model_id)})
        elif kind == "input_audio_buffer.append":
            samples = pcm16_samples(event.get("audio"))
            if self.settings.sample_rate != SAMPLE_RATE:
                self.resampler = self.resampler or StreamResampler(self.settings.sample_rate)
                samples = self.resampler.process(samples)
            self.received_samples += len(samples)
            self.queued_samples += len(samples)
            limits = self.service.limits
            if self.received_samples > limits.max_session_s * SAMPLE_RATE:
                raise RealtimeError(f"a session takes at most {limits.max_session_s:g} s of audio",
                                    "session_limit_reached")
            if self.queued_samples > limits.max_backlog_s * SAMPLE_RATE:
                raise RealtimeError(f"more than {limits.max_backlog_s:g} s of audio are waiting for the model: "
                                    "the server cannot keep up", "falling_behind", kind="server_error")
            self._queue(("audio", samples, time.monotonic()))
        elif kind == "input_audio_buffer.commit":
            self._queue(("commit", event_id))
        elif kind == "input_audio_buffer.clear":
            self._queue(("clear", event_id))
        elif kind == "response.create":
            response = event.get("response")
            question = response.get("instructions") if isinstance(response, dict) else None
            if not isinstance(question, str) or not question.strip():
                raise RealtimeError("response.create needs `response.instructions`: the question to answer "
                                    "about the session's audio", "missing_instructions", "response.instructions")
            max_tokens = response.get("max_output_tokens", response.get("max_response_output_tokens", "inf"))
            max_tokens = ANSWER_TOKENS if max_tokens == "inf" else max_tokens
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
                raise RealtimeError(f"max_output_tokens must be a positive integer or \"inf\", got {max_tokens!r}",
                                    "invalid_value", "response.max_output_tokens")
            self._queue(("ask", event_id, question, max_tokens))
        else:
            raise RealtimeError(f"event type {kind!r} is not served (transcription sessions only: "
                                "docs/realtime.md)", "unknown_event", "type")

    def _queue(self, operation: tuple) -> None:
        self.operations.append(operation)
        self.waiting.set()

    async def _drive(self) -> None:
        """One job at a time: every operation queued since the last one, in order."""
        flight = self.service.flight
        while True:
            await self.waiting.wait()
            self.waiting.clear()
            operations, self.operations = self.operations, []
            if not operations:
                continue
            self.queued_samples -= sum(len(op[1]) for op in operations if op[0] == "audio")
            settings = self.settings
            while True:
                try:
                    job = flight.submit(lambda: self._work(settings, operations), self.service.timeout_s)
                    break
                except QueueFull:  # HTTP requests fill the queue: the audio waits (and counts as backlog)
                    await asyncio.sleep(RETRY_S)
            try:
                await job.start()
                async for event in job.items():
                    await self.send(event)
            except WebSocketDisconnect:
                return  # the client went away: run() ends the session
            except Exception as exc:  # a timeout, input the session cannot take, or a bug: end the session
                if not isinstance(exc, (TimeoutError, InputError)):
                    log.error("realtime session failed unexpectedly (a bug)", exc_info=exc)
                error = RealtimeError(f"internal error: {type(exc).__name__}: {exc}", "server_error",
                                      kind="server_error")
                if self.websocket.client_state == WebSocketState.CONNECTED:
                    await self.refuse(error, 1011)
                return
            finally:
                job.cancelled.set()  # a job still queued when the session ends never runs

    def _work(self, settings: SessionSettings, operations: list[tuple]) -> Iterator[dict]:
        """On the inference thread."""
        if self.transcriber is None:
            self.transcriber = _Transcriber(self.service.model, settings)
        return self.transcriber.run(operations)


class RealtimeService:
    """The endpoint's shared state: the model, the inference queue, the limits and the open sessions."""

    def __init__(self, model: MossAudio, flight: SingleFlight, model_id: str, api_key: str | None,
                 timeout_s: float, limits: RealtimeLimits):
        self.model, self.flight, self.model_id, self.api_key = model, flight, model_id, api_key
        self.timeout_s, self.limits = timeout_s, limits
        self.sessions = 0

    def _key_given(self, websocket: WebSocket) -> str:
        header = websocket.headers.get("authorization", "")
        if header:
            return header.removeprefix("Bearer ").strip()
        return next((p[len(KEY_SUBPROTOCOL):] for p in websocket.scope.get("subprotocols", [])
                     if p.startswith(KEY_SUBPROTOCOL)), "")

    async def handle(self, websocket: WebSocket) -> None:
        offered = websocket.scope.get("subprotocols", [])
        # a browser that offers subprotocols fails the handshake unless one is chosen
        await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
        connection = _Connection(self, websocket)
        intent = websocket.query_params.get("intent", "transcription")
        if self.api_key is not None and not hmac.compare_digest(self._key_given(websocket).encode(),
                                                                self.api_key.encode()):
            await connection.refuse(RealtimeError(
                "missing or incorrect API key (send `Authorization: Bearer KEY`, or the subprotocol "
                f"`{KEY_SUBPROTOCOL}KEY` from a browser)", "invalid_api_key"), 1008)
        elif intent != "transcription":
            await connection.refuse(RealtimeError(f"intent={intent!r}: only intent=transcription is served",
                                                  "unsupported_intent", "intent"), 1008)
        elif self.sessions >= self.limits.max_sessions:
            await connection.refuse(RealtimeError(
                f"{self.sessions} realtime session(s) open, the most this server takes (--max-sessions); "
                "retry later", "session_limit", kind="server_error"), 1013)
        else:
            self.sessions += 1
            try:
                await connection.run()
            finally:
                self.sessions -= 1
