"""The OpenAI API's shapes: reading requests (bodies within a limit, multipart forms, chat
messages with `input_audio`) and writing responses (errors, verbose_json, server-sent events)."""
from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from .answer import Answer
from .errors import InputError
from .formats import transcript_text
from .timestamps import Segment
from .transcribe import TranscriptionInfo

# labels only: load_audio reads the bytes whatever they say (libsndfile, else FFmpeg)
AUDIO_FORMATS = ("wav", "flac", "mp3", "ogg", "m4a", "aac", "mp4", "webm", "opus")
DRAIN_FACTOR = 8  # an oversized body is read (and dropped) up to this many limits, then cut off


class ApiError(InputError):
    """A request the server refuses, with the HTTP status and OpenAI error fields to answer with."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                       "code": self.code}}, status_code=self.status)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or 413 when it is (or declares itself) larger than `limit`. An oversized body
    is still read and dropped up to DRAIN_FACTOR limits, so the client sees the 413 rather
    than a connection reset in the middle of its upload."""
    declared = request.headers.get("content-length", "")
    too_large = declared.isdigit() and int(declared) > limit
    body = bytearray()
    async for chunk in request.stream():
        if too_large:
            continue
        body += chunk
        if len(body) > limit:
            too_large = True
        if len(body) > DRAIN_FACTOR * limit:
            break
    if too_large:
        raise ApiError(413, f"request body over the server's limit of {limit} bytes", code="request_too_large")
    return bytes(body)


async def drain(request: Request, limit: int) -> None:
    """Read and drop an unread body (up to DRAIN_FACTOR limits) before an early error, so that
    clients which send the whole body before reading see the error, not a broken pipe."""
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > DRAIN_FACTOR * limit:
            break


async def read_form(request: Request, limit: int):
    body = await read_body(request, limit)
    replayed = False

    async def receive() -> dict:  # the buffered body, offered once to the form parser
        nonlocal replayed
        if replayed:
            return {"type": "http.disconnect"}
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, receive).form(max_files=1, max_fields=32)
    except Exception as exc:  # python-multipart's and Starlette's parse errors
        raise ApiError(400, f"malformed multipart body: {exc}") from exc


def truthy(value: Any) -> bool:
    return str(value).lower() in ("1", "true", "yes", "on")


def number(value: Any, name: str, kind: type = float, minimum: float | None = None) -> Any:
    """`value` as a finite `kind` of at least `minimum`: NaN, infinities and negative seeds or
    temperatures would otherwise fail deep in sampling, as a 500."""
    try:
        result = kind(value)
    except (TypeError, ValueError, OverflowError):  # int(inf) overflows
        raise ApiError(400, f"{name} must be a number, got {value!r}", param=name) from None
    if not math.isfinite(result) or (minimum is not None and result < minimum):
        raise ApiError(400, f"{name} must be a finite number{'' if minimum is None else f' >= {minimum}'}, "
                            f"got {value!r}", param=name)
    return result


def json_object(body: dict, name: str) -> dict:
    """An optional object-valued field (`stream_options`, `chat_template_kwargs`); {} when absent."""
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, f"{name} must be an object, got {type(value).__name__}", param=name)
    return value


def timestamp_mode(response_format: str, granularities: list[str]) -> str:
    """OpenAI's granularities -> our timestamp prompt; srt/vtt/verbose_json need segment times."""
    unknown = set(granularities) - {"word", "segment"}
    if unknown:
        raise ApiError(400, f"timestamp_granularities[] takes word and/or segment, got {sorted(unknown)}",
                       param="timestamp_granularities[]")
    if "word" in granularities:
        return "word"
    if "segment" in granularities or response_format in ("srt", "vtt", "verbose_json"):
        return "sentence"
    return "none"


def chat_inputs(body: dict) -> tuple[bytes, str, str | None]:
    """(audio bytes, question, system) from OpenAI chat messages: optional system messages,
    then one user message with one `input_audio` part and its text parts."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    system = [m for m in messages if isinstance(m, dict) and m.get("role") in ("system", "developer")]
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if len(users) != 1 or len(system) + 1 != len(messages):
        raise ApiError(400, "send system messages and exactly one user message (one audio clip per "
                            "conversation; earlier turns are not supported)", param="messages")
    audio, texts = None, []
    content = users[0].get("content")
    for part in content if isinstance(content, list) else [{"type": "text", "text": content}]:
        if not isinstance(part, dict):
            raise ApiError(400, "content parts must be objects", param="messages")
        if part.get("type") == "text":
            texts.append(str(part.get("text") or ""))
        elif part.get("type") == "input_audio":
            if audio is not None:
                raise ApiError(400, "one input_audio part per request", param="messages")
            audio = _input_audio(part.get("input_audio"))
        else:
            raise ApiError(400, f"unsupported content part type {part.get('type')!r}", param="messages")
    if audio is None:
        raise ApiError(400, "the user message needs an input_audio part", param="messages")
    question = "\n".join(t for t in texts if t.strip()) or "Describe the audio."
    return audio, question, "\n".join(_text_of(m.get("content")) for m in system) or None


def _input_audio(part: Any) -> bytes:
    if not isinstance(part, dict) or not isinstance(part.get("data"), str):
        raise ApiError(400, "input_audio needs base64 `data` and a `format`", param="messages")
    if str(part.get("format", "wav")).lower() not in AUDIO_FORMATS:
        raise ApiError(400, f"input_audio format {part.get('format')!r} not one of {', '.join(AUDIO_FORMATS)}",
                       param="messages")
    try:
        return base64.b64decode(part["data"], validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "input_audio data is not valid base64", param="messages") from None


def _text_of(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


# --- responses ---------------------------------------------------------------------------------

def verbose_json(segments: list[Segment], info: TranscriptionInfo) -> dict:
    """OpenAI's verbose_json, with only what the model gives (no log-probs); untimed sides null."""
    data: dict[str, Any] = {
        "task": "transcribe", "language": info.language, "duration": round(info.duration, 3),
        "text": transcript_text(segments),
        "segments": [{"id": i, "start": s.start, "end": s.end, "text": s.text} for i, s in enumerate(segments)],
        "finish_reasons": info.finish_reasons,  # ours: per window, "repetition" when the loop guard cut it
    }
    if info.timestamps == "word":
        data["words"] = [{"word": w.text, "start": w.start, "end": w.end} for s in segments for w in s.words]
    return data


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def usage(answer: Answer) -> dict:
    completion = len(answer.token_ids)
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": completion,
            "total_tokens": answer.prompt_tokens + completion}
