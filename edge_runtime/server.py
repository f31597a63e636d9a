"""`moss-edge serve`: an OpenAI-compatible HTTP server for one bundle (needs the `server` extra).

Endpoints: POST /v1/audio/transcriptions (multipart, as OpenAI's), POST /v1/chat/completions
(`input_audio` content parts), GET /v1/models, GET /health, the Realtime WebSocket
/v1/realtime?intent=transcription (realtime.py) and the browser page at / (static/). A
llama.cpp context is not thread-safe, so inference runs one request at a time on one worker
thread (Realtime sessions as one job at a time each, docs/realtime.md); waiting transcription
requests with the same options run together, sharing the model's `parallel` sequences; up to
`max_queue` more wait, later ones get 429. Bodies over `max_body_bytes` get 413, requests
past `timeout_s` 503 (still queued) or 504 (running, stopped between tokens or segments),
bad input (an InputError) 400, anything else 500 with its traceback in the `moss_edge` log;
every error is OpenAI-style JSON and leaves the server serving.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncGenerator, AsyncIterator, Callable, Iterator

import numpy as np

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from .answer import Answer, AnswerDelta, AnswerStream
from .audio import AudioError, load_audio
from .audio_session import AudioSession
from .errors import InputError
from .formats import to_srt, to_vtt, transcript_text
from .openai_api import (
    ApiError, chat_inputs, drain, json_object, number, read_body, read_form, sse, timestamp_mode, truthy, usage, verbose_json)
from .prompt import ANSWER_TOKENS
from .realtime import RealtimeLimits, RealtimeService
from .single_flight import Job, QueueFull, QueueTimeout, RunTimeout, SingleFlight
from .timestamps import Segment, join_text
from .transcribe import MossAudio, TranscriptionInfo

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
STATIC = Path(__file__).parent / "static"  # the browser page: plain files, no build step
log = logging.getLogger("moss_edge")


@dataclass(frozen=True)
class ServerConfig:
    model_id: str
    api_key: str | None = None
    max_queue: int = 4  # requests that may wait behind the running one
    max_body_bytes: int = 25 * 2**20  # OpenAI's own upload limit
    timeout_s: float = 600.0  # per request, queueing included
    window_seconds: float = 30.0
    max_tokens: int = ANSWER_TOKENS  # chat default when the request names none
    realtime: RealtimeLimits = RealtimeLimits()


def api_error(exc: Exception) -> ApiError:
    """What a failure means to the client, decided here only: a refused request keeps its status,
    other bad input is 400, a busy or slow server 429/503/504, anything else (a bug) 500."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, QueueFull):
        return ApiError(429, f"server busy: {exc} requests in progress or queued; retry later", "server_error",
                        code="queue_full")
    if isinstance(exc, QueueTimeout):
        return ApiError(503, f"the server stayed busy for {exc} s; retry later", "server_error", code="timeout")
    if isinstance(exc, RunTimeout):
        return ApiError(504, f"the request did not finish within {exc} s", "server_error", code="timeout")
    if isinstance(exc, InputError):
        audio = isinstance(exc, AudioError)
        return ApiError(400, str(exc), param="file" if audio else None, code="invalid_audio" if audio else None)
    log.error("request failed unexpectedly (a bug)", exc_info=exc)
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")


def create_app(model: MossAudio, config: ServerConfig) -> Starlette:
    flight = SingleFlight(config.max_queue, _transcriptions_together(model), together_max=model.engine.n_seq)
    recent_audio = RecentAudio(model)  # used by the flight's one worker only
    realtime = RealtimeService(model, flight, config.model_id, config.api_key, config.timeout_s, config.realtime)

    async def authorize(request: Request) -> None:
        if config.api_key is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), config.api_key.encode()):
            await drain(request, config.max_body_bytes)
            raise ApiError(401, "missing or incorrect API key (send `Authorization: Bearer KEY`)",
                           code="invalid_api_key")

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": config.model_id, "jobs": flight.jobs})

    async def models(request: Request) -> Response:
        await authorize(request)
        return JSONResponse({"object": "list", "data": [
            {"id": config.model_id, "object": "model", "created": 0, "owned_by": "moss-audio-edge"}]})

    async def transcriptions(request: Request) -> Response:
        await authorize(request)
        form = await read_form(request, config.max_body_bytes)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "`file` (the audio, as a multipart upload) is required", param="file")
        response_format = str(form.get("response_format") or "json")
        if response_format not in RESPONSE_FORMATS:
            raise ApiError(400, f"response_format {response_format!r} not one of {', '.join(RESPONSE_FORMATS)}",
                           param="response_format")
        granularities = form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities")
        mode = timestamp_mode(response_format, [str(g) for g in granularities])
        stream = truthy(form.get("stream", "false"))
        if stream and response_format not in ("json", "text"):
            raise ApiError(400, "stream=true gives text events: use response_format json or text", param="stream")
        if form.get("prompt"):
            raise ApiError(400, "`prompt` is not supported by this model", param="prompt")
        audio = await upload.read()
        options = dict(timestamps=mode, language=form.get("language") or None,
                       temperature=number(form.get("temperature", 0.0), "temperature", minimum=0),
                       window_seconds=config.window_seconds)

        def setup() -> Iterator[Any]:
            segments, info = model.transcribe(audio, **options)
            return itertools.chain([info], segments)

        # concurrent requests with the same options may share the parallel sequences
        job = flight.submit(setup, config.timeout_s, together=tuple(sorted(options.items())), payload=audio)
        await job.start()
        items = job.items()
        info: TranscriptionInfo = await anext(items)
        if stream:
            return StreamingResponse(_transcript_events(items), media_type="text/event-stream")
        segments = [s async for s in items]
        if response_format == "text":
            return PlainTextResponse(transcript_text(segments) + "\n")
        if response_format in ("srt", "vtt"):
            render = to_srt if response_format == "srt" else to_vtt
            return PlainTextResponse(render(segments, info.duration, info.language))
        if response_format == "verbose_json":
            return JSONResponse(verbose_json(segments, info))
        return JSONResponse({"text": transcript_text(segments)})

    async def _transcript_events(items: AsyncGenerator[Segment, None]) -> AsyncIterator[str]:
        text = ""
        try:
            async for segment in items:  # one delta per segment, as its window finishes
                longer = join_text([text, segment.text])
                yield sse({"type": "transcript.text.delta", "delta": longer[len(text):]})
                text = longer
            yield sse({"type": "transcript.text.done", "text": text})
        except Exception as exc:  # the status is already sent: report in the stream
            error = api_error(exc)
            yield sse({"type": "error", "error": {"message": error.message, "code": error.code}})
        finally:
            await items.aclose()  # a client that went away cancels the job at its next segment

    async def chat_completions(request: Request) -> Response:
        await authorize(request)
        try:
            body = json.loads(await read_body(request, config.max_body_bytes))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:  # nesting past Python's limit
            raise ApiError(400, f"request body is not valid JSON ({exc})") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        audio, question, system = chat_inputs(body)
        kwargs = json_object(body, "chat_template_kwargs")
        thinking = body.get("enable_thinking", kwargs.get("enable_thinking"))
        options = dict(
            thinking=None if thinking is None else bool(thinking), system=system,
            thinking_budget=None if body.get("thinking_budget") is None
            else number(body["thinking_budget"], "thinking_budget", int, minimum=0),
            max_tokens=number(body.get("max_completion_tokens") or body.get("max_tokens") or config.max_tokens,
                               "max_tokens", int),
            temperature=number(body.get("temperature", 0.0), "temperature", minimum=0),
            top_p=number(body.get("top_p", 1.0), "top_p", minimum=0),
            seed=None if body.get("seed") is None else number(body["seed"], "seed", int, minimum=0))
        if options["max_tokens"] < 1:
            raise ApiError(400, "max_tokens must be at least 1", param="max_tokens")

        def setup() -> Iterator[Any]:
            return _then_answer(recent_audio.session(audio, options.pop("system")).ask_stream(question, **options))

        job = flight.submit(setup, config.timeout_s)
        await job.start()
        reply = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": config.model_id}
        if body.get("stream"):
            with_usage = bool(json_object(body, "stream_options").get("include_usage"))
            return StreamingResponse(_chat_events(job.items(), reply, with_usage), media_type="text/event-stream")
        answer = [item async for item in job.items()][-1]
        message = {"role": "assistant", "content": answer.text}
        if answer.thinking is not None:
            message["reasoning_content"] = answer.thinking
        return JSONResponse({**reply, "object": "chat.completion", "choices": [
            {"index": 0, "message": message, "finish_reason": answer.finish_reason}], "usage": usage(answer)})

    async def _chat_events(items: AsyncGenerator[Any, None], reply: dict, with_usage: bool) -> AsyncIterator[str]:
        def chunk(delta: dict, finish: str | None = None) -> str:
            return sse({**reply, "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        yield chunk({"role": "assistant", "content": ""})
        try:
            async for item in items:
                if isinstance(item, AnswerDelta):
                    yield chunk({"content" if item.kind == "answer" else "reasoning_content": item.text})
                elif isinstance(item, Answer):
                    yield chunk({}, item.finish_reason)
                    if with_usage:
                        yield sse({**reply, "object": "chat.completion.chunk", "choices": [], "usage": usage(item)})
        except Exception as exc:  # the status is already sent: report in the stream
            error = api_error(exc)
            yield sse({"error": {"message": error.message, "type": error.kind, "code": error.code}})
        finally:
            await items.aclose()  # a client that went away cancels the job at its next token
        yield sse("[DONE]")

    async def on_error(request: Request, exc: Exception) -> Response:
        return api_error(exc).response()

    async def on_http_error(request: Request, exc: HTTPException) -> Response:
        return ApiError(exc.status_code, str(exc.detail)).response()

    app = Starlette(
        routes=[Route("/health", health), Route("/v1/models", models),
                Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
                Route("/v1/chat/completions", chat_completions, methods=["POST"]),
                WebSocketRoute("/v1/realtime", realtime.handle),
                Route("/", lambda request: FileResponse(STATIC / "index.html")),
                Mount("/static", StaticFiles(directory=STATIC))],
        # Starlette re-raises what reaches its `Exception` handler (uvicorn logs it again); the
        # expected failures are handled before that
        exception_handlers={HTTPException: on_http_error, Exception: on_error,
                            **dict.fromkeys((InputError, QueueFull, TimeoutError), on_error)},
        lifespan=lambda app: _stopping(flight))
    app.state.flight = flight
    app.state.recent_audio = recent_audio
    return app


class RecentAudio:
    """The last chat request's audio, kept encoded and evaluated: a follow-up question about
    the same clip (same bytes, same system prompt) costs only its own tokens (audio_session.py)."""

    def __init__(self, model: MossAudio):
        self._model = model
        self._key: bytes | None = None
        self._session: AudioSession | None = None
        self.reused = 0

    def session(self, audio: bytes, system: str | None) -> AudioSession:
        key = hashlib.sha256(audio + b"\0" + (system or "").encode()).digest()
        if key == self._key:
            self.reused += 1
        else:
            self._key, self._session = None, None  # a bad clip leaves nothing behind
            self._session = self._model.session(audio, system=system)
            self._key = key
        return self._session


def _transcriptions_together(model: MossAudio) -> Callable[[list[Job]], None]:
    """How the worker runs concurrent transcription requests with the same options: their
    windows share the model's parallel sequences (MossAudio.transcribe_many), and each request
    gets the items it would get alone: the info, then its segments (all at once, when its
    last window is done)."""

    def run(jobs: list[Job]) -> None:
        accepted: list[tuple[Job, np.ndarray]] = []
        for job in jobs:
            try:
                accepted.append((job, load_audio(job.payload)))
            except InputError as exc:  # this request's audio is bad; the others go on
                job.fail(exc)
                continue
            job.begin()
        options = dict(jobs[0].together)
        for file in model.transcribe_many([samples for _, samples in accepted], **options):
            job = accepted[file.index][0]
            if all(job.put(item) for item in (file.info, *file.segments)):
                job.finish()
    return run


@contextlib.asynccontextmanager
async def _stopping(flight: SingleFlight) -> AsyncIterator[None]:
    yield
    flight.shutdown()


def _then_answer(stream: AnswerStream) -> Iterator[AnswerDelta | Answer]:
    """The deltas, then the whole Answer (usage, finish reason) as the last item."""
    yield from stream
    yield stream.answer


def make_server(model: MossAudio, config: ServerConfig, host: str = "127.0.0.1", port: int = 8000):
    """A uvicorn.Server for the app: `.run()` blocks, `.should_exit = True` stops it."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(create_app(model, config), host=host, port=port, log_level="warning"))


def serve(model: MossAudio, config: ServerConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run until interrupted."""
    make_server(model, config, host, port).run()
