"""`moss-edge serve` driven by the real `openai` client over loopback.

Each server runs in a background thread on 127.0.0.1 with an ephemeral port. Outputs that
must parse are scripted (fake_generation.py); the rest runs the tiny k1 bundle for real.
Bad requests get OpenAI-style 4xx errors and leave the server serving.
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import openai
import pytest
import soundfile as sf
from cli_helpers import MOSS_EDGE
from encoded_audio import M4A, encode
from fake_generation import script_outputs

from edge_runtime.audio_session import AudioSession
from edge_runtime.engine import Sequence
from edge_runtime.server import ServerConfig, make_server
from edge_runtime.transcribe import MossAudio

KEY = "test-key"
WORD_OUTPUT = "[0.00]Turn[0.40][0.40]on[0.60][0.60]the[0.70][0.70]lights.[1.20][1.50]Set[1.80][1.80]a[1.90]timer"


def http(url: str, body: bytes | dict | None = None, key: str | None = KEY) -> tuple[int, dict]:
    """A plain request (GET, or POST with a body) for what the openai client will not send."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@contextlib.contextmanager
def running(model: MossAudio, **settings) -> Iterator[tuple[str, object]]:
    """A live server; yields its base URL and the app (whose state holds the queue)."""
    config = ServerConfig(model_id="moss-tiny", **{"api_key": KEY, "max_body_bytes": 2_000_000, **settings})
    server = make_server(model, config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server.config.app
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def model(tiny_bundles) -> MossAudio:
    return MossAudio(tiny_bundles["k1"], threads=1, n_ctx=2048)


@pytest.fixture(scope="module")
def url(model) -> Iterator[str]:
    with running(model, max_tokens=12) as (base, _):
        yield base


@pytest.fixture
def client(url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def wav(speech_wav: Path) -> bytes:
    return speech_wav.read_bytes()


def audio_message(wav: bytes, text: str = "What is said?", fmt: str = "wav") -> list[dict]:
    return [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": text}, {"type": "input_audio", "input_audio": {
                "data": base64.b64encode(wav).decode(), "format": fmt}}]}]


def assert_healthy(url: str, client: openai.OpenAI, wav: bytes) -> None:
    status, health = http(f"{url}/health")
    assert status == 200 and health["status"] == "ok"
    assert client.audio.transcriptions.create(model="moss-tiny", file=("a.wav", wav), response_format="text")


# --- what clients do -----------------------------------------------------------------------

def test_models_and_health(client, url):
    assert [m.id for m in client.models.list()] == ["moss-tiny"]
    assert http(f"{url}/health") == (200, {"status": "ok", "model": "moss-tiny", "jobs": 0})


def test_transcription_with_word_and_segment_timestamps(client, model, wav, monkeypatch):
    script_outputs(monkeypatch, model, [WORD_OUTPUT])
    result = client.audio.transcriptions.create(model="moss-tiny", file=("speech.wav", wav),
                                                response_format="verbose_json",
                                                timestamp_granularities=["word", "segment"])
    assert result.text == "Turn on the lights. Set a timer"
    assert result.duration == pytest.approx(21.38, abs=0.05)
    assert [(w.word, w.start, w.end) for w in result.words] == [
        ("Turn", 0.0, 0.4), ("on", 0.4, 0.6), ("the", 0.6, 0.7), ("lights.", 0.7, 1.2),
        ("Set", 1.5, 1.8), ("a", 1.8, 1.9), ("timer", 1.9, None)]
    assert [(s.start, s.end, s.text) for s in result.segments] == [
        (0.0, 1.2, "Turn on the lights."), (1.5, None, "Set a timer")]


def test_transcription_as_srt(client, model, wav, monkeypatch):
    script_outputs(monkeypatch, model, ["[0.00]Turn on the lights.[1.20][1.50]Set a timer.[3.25]"])
    srt = client.audio.transcriptions.create(model="moss-tiny", file=("speech.wav", wav), response_format="srt")
    assert srt == ("1\n00:00:00,000 --> 00:00:01,200\nTurn on the lights.\n\n"
                   "2\n00:00:01,500 --> 00:00:03,250\nSet a timer.\n\n")


def test_transcription_json_text_and_vtt_on_the_real_tiny_model(client, wav):
    plain = client.audio.transcriptions.create(model="moss-tiny", file=("speech.wav", wav))
    assert isinstance(plain.text, str) and plain.text
    vtt = client.audio.transcriptions.create(model="moss-tiny", file=("speech.wav", wav), response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ")


def test_streamed_transcription(client, model, wav, monkeypatch):
    script_outputs(monkeypatch, model, ["hello there", "general kenobi"])
    events = list(client.audio.transcriptions.create(
        model="moss-tiny", file=("speech.wav", wav), stream=True))
    assert [e.type for e in events] == ["transcript.text.delta"] + ["transcript.text.done"]
    assert events[-1].text == "hello there"


def test_chat_completion_with_audio(client, wav):
    reply = client.chat.completions.create(model="moss-tiny", messages=audio_message(wav), max_tokens=6)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 6 and reply.usage.prompt_tokens > 250
    streamed = client.chat.completions.create(model="moss-tiny", messages=audio_message(wav), max_tokens=6,
                                              stream=True, stream_options={"include_usage": True})
    chunks = list(streamed)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # greedy: the same tokens either way
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason


def test_follow_up_questions_about_the_same_audio_reuse_it(model, wav, speech_wav):
    """Consecutive chat requests with the same clip: the audio is encoded and evaluated once;
    each answer is what a fresh `ask` gives."""
    questions = ["What is said?", "How does the speaker sound?", "Name one word."]
    with running(model) as (url, app):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)
        replies = [client.chat.completions.create(model="moss-tiny", messages=audio_message(wav, q), max_tokens=6)
                   for q in questions]
        assert app.state.recent_audio.reused == len(questions) - 1
    for question, reply in zip(questions, replies):
        fresh = model.ask(speech_wav, question, system="Be brief.", max_tokens=6)
        assert reply.choices[0].message.content == fresh.text


def test_chat_completion_returns_reasoning_apart(client, model, wav, monkeypatch):
    script_outputs(monkeypatch, model, ["<think>\nA calm voice.\n</think>\n\nNeutral.", "<think>\nA calm voice."
                                        "\n</think>\n\nNeutral."])
    reply = client.chat.completions.create(model="moss-tiny", messages=audio_message(wav, "Emotion?"), max_tokens=40)
    assert reply.choices[0].message.content == "Neutral."
    assert reply.choices[0].message.model_extra["reasoning_content"] == "A calm voice."
    chunks = list(client.chat.completions.create(model="moss-tiny", messages=audio_message(wav, "Emotion?"),
                                                 max_tokens=40, stream=True))
    reasoning = "".join(c.choices[0].delta.model_extra.get("reasoning_content") or "" for c in chunks)
    assert reasoning.strip() == "A calm voice."
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Neutral."


def test_m4a_upload_and_input_audio(client, wav):
    """A phone's m4a (AAC) goes through FFmpeg: all of its audio is transcribed."""
    pcm, rate = sf.read(io.BytesIO(wav), dtype="int16")
    m4a = encode(pcm, rate, M4A)
    result = client.audio.transcriptions.create(model="moss-tiny", file=("memo.m4a", m4a),
                                                response_format="verbose_json")
    assert abs(result.duration - len(pcm) / rate) < 0.1
    reply = client.chat.completions.create(model="moss-tiny", messages=audio_message(m4a, fmt="m4a"), max_tokens=4)
    assert reply.choices[0].finish_reason in ("stop", "length")


# --- bad requests: 4xx, OpenAI-style, and the server keeps serving -------------------------

def test_corrupt_audio(client, url, wav):
    with pytest.raises(openai.BadRequestError) as err:
        client.audio.transcriptions.create(model="moss-tiny", file=("a.wav", b"RIFF\x10\x00\x00\x00WAVEjunk"))
    assert err.value.body["param"] == "file" and "cannot decode" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="moss-tiny", messages=audio_message(b"not audio at all"))
    assert_healthy(url, client, wav)


@pytest.mark.parametrize("bug", [RuntimeError("a bug"), ValueError("a bug that happens to be a ValueError")])
def test_a_bug_is_a_500_with_its_traceback_logged_and_the_server_keeps_serving(url, client, wav, model, bug,
                                                                                monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise bug
    monkeypatch.setattr(AudioSession, "ask_stream", broken)
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="moss-tiny", messages=audio_message(wav), max_tokens=2)
    assert err.value.status_code == 500 and err.value.body["type"] == "server_error"
    assert any(r.name == "moss_edge" and r.exc_info and r.exc_info[1] is bug for r in caplog.records)
    monkeypatch.undo()
    assert_healthy(url, client, wav)


@pytest.mark.parametrize("options", [
    {"response_format": "xml"},
    {"timestamp_granularities": ["sentence"]},
    {"response_format": "srt", "stream": True},
    {"prompt": "The following is a podcast."},
])
def test_wrong_transcription_options(client, wav, options):
    with pytest.raises(openai.BadRequestError) as err:
        result = client.audio.transcriptions.create(model="moss-tiny", file=("a.wav", wav), **options)
        list(result) if options.get("stream") else None
    assert err.value.status_code == 400 and err.value.body["message"]


@pytest.mark.parametrize("messages, needle", [
    ([{"role": "user", "content": "no audio here"}], "input_audio"),
    (audio_message(b"x", fmt="aac"), "format"),
    ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "%%%", "format": "wav"}}]}],
     "base64"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
     "exactly one user message"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "image_url"),
])
def test_wrong_chat_requests(client, messages, needle):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="moss-tiny", messages=messages)
    assert needle in err.value.body["message"]


def test_invalid_json_and_unknown_route(url):
    status, error = http(f"{url}/v1/chat/completions", b"{not json")
    assert status == 400 and error["error"]["type"] == "invalid_request_error"
    status, error = http(f"{url}/v1/nothing-here")
    assert status == 404 and "error" in error


def test_oversized_body(client, url, wav):
    with pytest.raises(openai.APIStatusError) as err:
        client.audio.transcriptions.create(model="moss-tiny", file=("big.wav", wav * 3))
    assert err.value.status_code == 413 and err.value.body["code"] == "request_too_large"
    assert_healthy(url, client, wav)


def test_missing_or_wrong_key(url, client, wav):
    stranger = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.audio.transcriptions.create(model="moss-tiny", file=("a.wav", wav))
    with pytest.raises(openai.AuthenticationError):
        stranger.models.list()
    # the openai client refuses to send no key at all: a plain request does
    status, error = http(f"{url}/v1/chat/completions", {"model": "m", "messages": audio_message(wav)}, key=None)
    assert status == 401 and error["error"]["code"] == "invalid_api_key"
    assert http(f"{url}/health", key=None)[0] == 200  # health needs no key
    assert_healthy(url, client, wav)


# --- bounded concurrency and timeouts ------------------------------------------------------

def chat_in_thread(url: str, wav: bytes, results: list) -> threading.Thread:
    def call() -> None:
        results.append(http(f"{url}/v1/chat/completions",
                            {"model": "m", "messages": audio_message(wav), "max_tokens": 4})[0])
    thread = threading.Thread(target=call)
    thread.start()
    return thread


def wait_for(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_full_queue_gets_429_and_then_everything_completes(model, wav, monkeypatch):
    release = threading.Event()

    def blocked(sequence, max_tokens, *args, **kwargs):
        release.wait(30)
        yield from model.engine.tokenize("done")
    monkeypatch.setattr(Sequence, "decode", blocked)
    with running(model, max_queue=1) as (url, app):
        results: list[int] = []
        first = chat_in_thread(url, wav, results)
        wait_for(lambda: app.state.flight.jobs == 1)
        second = chat_in_thread(url, wav, results)
        wait_for(lambda: app.state.flight.jobs == 2)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        with pytest.raises(openai.RateLimitError) as err:
            client.chat.completions.create(model="m", messages=audio_message(wav))
        assert err.value.body["code"] == "queue_full"
        release.set()
        first.join(60)
        second.join(60)
        assert results == [200, 200]
        wait_for(lambda: app.state.flight.jobs == 0)


def test_timeouts_give_504_running_and_503_queued_and_the_server_recovers(model, wav, monkeypatch):
    def stuck(sequence, max_tokens, *args, **kwargs):
        time.sleep(2.5)  # a long step: the worker can only notice the cancel after it
        yield from model.engine.tokenize("late")
    monkeypatch.setattr(Sequence, "decode", stuck)
    with running(model, timeout_s=1.0) as (url, app):
        results: list[int] = []
        running_one = chat_in_thread(url, wav, results)
        wait_for(lambda: app.state.flight.jobs == 1)
        queued_one = chat_in_thread(url, wav, results)
        running_one.join(60)
        queued_one.join(60)
        assert sorted(results) == [503, 504]
        wait_for(lambda: app.state.flight.jobs == 0)
        monkeypatch.undo()
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        assert client.chat.completions.create(model="m", messages=audio_message(wav), max_tokens=2).choices


def test_waiting_transcriptions_share_the_parallel_sequences_and_get_what_they_get_alone(tiny_bundles, model, speech,
                                                                                         wav, monkeypatch):
    clips = []
    for seconds in (7, 12, 21):  # 1, 2 and 3 windows of <= 10 s
        buffer = io.BytesIO()
        sf.write(buffer, speech[: seconds * 16000], 16000, format="WAV")
        clips.append(buffer.getvalue())
    clips.append(b"RIFF\x10\x00\x00\x00WAVEjunk")  # refused alone, the others go on

    def transcribe_all(url: str) -> list:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        results: list = [None] * len(clips)

        def one(i: int) -> None:
            try:
                results[i] = client.audio.transcriptions.create(
                    model="m", file=(f"{i}.wav", clips[i]), response_format="verbose_json").model_dump()
            except openai.BadRequestError as error:
                results[i] = error.body["code"]
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(clips))]
        for thread in threads:
            thread.start()
        return threads, results

    with running(model, window_seconds=10.0) as (url, _):  # parallel=1: one request at a time
        threads, alone = transcribe_all(url)
        for thread in threads:
            thread.join(120)
    release = threading.Event()
    ask_stream = AudioSession.ask_stream

    def held(session, *args, **kwargs):  # a chat request holds the worker while the others queue
        release.wait(60)
        return ask_stream(session, *args, **kwargs)
    monkeypatch.setattr(AudioSession, "ask_stream", held)
    parallel = MossAudio(tiny_bundles["k1"], threads=1, n_ctx=2048, parallel=3)
    with running(parallel, window_seconds=10.0, max_queue=8) as (url, app):
        chat = chat_in_thread(url, wav, [])
        wait_for(lambda: app.state.flight.jobs == 1)
        threads, together = transcribe_all(url)
        wait_for(lambda: app.state.flight.jobs == 1 + len(clips))
        release.set()
        for thread in (chat, *threads):
            thread.join(120)
        assert app.state.flight.batches == 1
    assert alone[-1] == together[-1] == "invalid_audio"
    assert all(result["segments"] for result in alone[:-1])
    assert together == alone


def test_a_client_leaving_a_stream_stops_its_job(model, wav, monkeypatch):
    def slow(sequence, max_tokens, *args, **kwargs):
        for token in model.engine.tokenize(" word" * 200)[:max_tokens]:
            time.sleep(0.05)
            yield token
    monkeypatch.setattr(Sequence, "decode", slow)
    with running(model) as (url, app):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        stream = client.chat.completions.create(model="m", messages=audio_message(wav), max_tokens=200, stream=True)
        chunks = iter(stream)
        next(chunks), next(chunks)
        left = time.monotonic()
        stream.close()
        wait_for(lambda: app.state.flight.jobs == 0, seconds=5)  # all 200 tokens would take 10 s
        assert time.monotonic() - left < 5


# --- `moss-edge serve` itself --------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_moss_edge_serve_answers_then_stops(tiny_bundles, wav):
    port = free_port()
    server = subprocess.Popen([str(MOSS_EDGE), "serve", str(tiny_bundles["k1"]), "--port", str(port),
                               "--threads", "1", "--n-ctx", "2048", "--model-id", "tiny"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "MOSS_EDGE_API_KEY": KEY})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.communicate()
            assert time.monotonic() < deadline, "moss-edge serve did not come up"
            with contextlib.suppress(OSError):
                if http(f"{url}/health")[0] == 200:
                    break
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny"]
        assert client.audio.transcriptions.create(model="tiny", file=("a.wav", wav), response_format="srt")
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    assert f"serving tiny on http://127.0.0.1:{port}/v1" in stderr


def test_serve_without_the_server_extra_says_which_extra(tiny_bundles):
    blocked = """
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("starlette", "uvicorn", "multipart", "python_multipart"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Blocked())
from edge_runtime.cli import main
sys.exit(main(sys.argv[1:]))
"""
    result = subprocess.run([sys.executable, "-c", blocked, "serve", str(tiny_bundles["k1"]), "--threads", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 4, result.stderr
    assert "moss-audio-edge[server]" in result.stderr and "Traceback" not in result.stderr
