"""The Realtime WebSocket (`/v1/realtime?intent=transcription`) driven by the real `websockets`
client against a running server, and questions asked of a live session.

What the socket returns is checked against independent offline computations: each completed
item equals greedy decoding of its utterance's audio from scratch (random tiny model), and an
answer from the live session equals `MossAudio.ask` on the same audio.
"""
from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
from typing import Iterator

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from edge_runtime.cli.demo import DEMO_SENTENCES, demo_clip
from edge_runtime.bundle import load_bundle
from edge_runtime.features import log_mel_spectrogram
from edge_runtime.prompt import SENTENCE_TIMESTAMPS, readout_budget
from edge_runtime.realtime import RealtimeLimits
from edge_runtime.timestamps import join_text, parse_output
from edge_runtime.transcribe import MossAudio
from moss_audio_edge.export.nano import corpus

from stream_helpers import offline_tokens, run_session, running_max_mel
from test_server import KEY, running, wait_for

SR = 16000
BLOCK_S = 0.04  # 40 ms appends, as OpenAI's examples send
PCM16K = {"type": "audio/pcm", "rate": 16000}


def pcm16(audio: np.ndarray) -> np.ndarray:
    """The int16 samples a client sends, and what the server reads back from them."""
    return np.clip(np.round(audio * 32768), -32768, 32767).astype("<i2")


class Client:
    """A Realtime client: appends audio at real-time pace while a thread collects server events
    with the wall-clock time each arrived."""

    def __init__(self, url: str, key: str | None = KEY, **options):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.ws: ClientConnection = connect(url.replace("http", "ws") + "/v1/realtime?intent=transcription",
                                            additional_headers=headers, legacy=True, **options)
        self.events: list[tuple[float, dict]] = []
        self.arrived = threading.Condition()
        self.closed: ConnectionClosed | None = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        try:
            for message in self.ws:
                with self.arrived:
                    self.events.append((time.monotonic(), json.loads(message)))
                    self.arrived.notify_all()
        except ConnectionClosed as closed:
            self.closed = closed
        with self.arrived:
            self.closed = self.closed or self.ws.close_code is not None
            self.arrived.notify_all()

    def send(self, event: dict) -> None:
        self.ws.send(json.dumps(event))

    def stream(self, int16: np.ndarray, rate: int = SR, paced: bool = True) -> list[float]:
        """Append in 40 ms blocks, released at real-time pace; the wall time each block went."""
        block = int(BLOCK_S * rate)
        started, sent = time.monotonic(), []
        for lo in range(0, len(int16), block):
            if paced:
                time.sleep(max(0.0, started + lo / rate - time.monotonic()))
            self.send({"type": "input_audio_buffer.append",
                       "audio": base64.b64encode(int16[lo:lo + block].tobytes()).decode()})
            sent.append(time.monotonic())
        return sent

    def wait(self, kind: str, count: int = 1, timeout: float = 120.0) -> list[dict]:
        """The first `count` events of type `kind`, waiting for them to arrive."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(found := self.of(kind)) < count:
                assert not self.closed, f"connection closed while waiting for {kind}: {self.kinds()}"
                assert self.arrived.wait(max(0.0, deadline - time.monotonic())), f"no {kind}: {self.kinds()}"
            return found[:count]

    def wait_any(self, timeout: float = 60.0) -> str:
        """The type of the first event."""
        with self.arrived:
            assert self.arrived.wait_for(lambda: self.events or self.closed, timeout), "no event"
            return self.events[0][1]["type"]

    def of(self, kind: str) -> list[dict]:
        return [e for _, e in self.events if e["type"] == kind]

    def kinds(self) -> list[str]:
        return [e["type"] for _, e in self.events]

    def close(self) -> None:
        self.ws.close()
        self.reader.join(30)


@pytest.fixture(scope="module")
def model(tiny_bundles) -> MossAudio:
    # exact arithmetic (f32 KV, no flash attention), no loop guard: the offline side decodes plainly
    return MossAudio(tiny_bundles["k2"], threads=1, n_ctx=4096, kv_type="f32", flash_attention="off",
                     loop_guard=None)


@pytest.fixture(scope="module")
def served(model) -> Iterator[tuple[str, object]]:
    with running(model, realtime=RealtimeLimits(max_sessions=1, max_message_bytes=64_000)) as (base, app):
        yield base, app


@pytest.fixture(scope="module")
def server(served) -> str:
    return served[0]


@pytest.fixture
def idle_model(model, served) -> MossAudio:
    """The model, for direct calls once the server's worker has no job left: llama.cpp's
    context serves one thread at a time (a session freed at a disconnect may still be
    finishing the block it was on)."""
    wait_for(lambda: served[1].state.flight.jobs == 0, seconds=60)
    return model


@pytest.fixture
def client(server) -> Iterator[Client]:
    client = Client(server)
    client.wait("session.created")
    yield client
    client.close()


@pytest.fixture(scope="module")
def two_utterances(speech) -> np.ndarray:
    """Silence, 9 s of speech (three encoder chunks), silence, 5 s of speech, silence; as int16."""
    gap = np.zeros(int(1.2 * SR), dtype=np.float32)
    return pcm16(np.concatenate([gap, speech[: 9 * SR], gap, speech[12 * SR: 17 * SR], gap]))


def offline_text(model: MossAudio, audio: np.ndarray) -> str:
    """Greedy transcript of one utterance's audio from scratch, with the live front end's clamp
    and the closing readout's budget, as its completed item should read."""
    seconds = len(audio) // 160 / 100
    tokens = offline_tokens(model, audio, SENTENCE_TIMESTAMPS, min(256, readout_budget("sentence", seconds)))
    return join_text([s.text for s in parse_output(model.engine.detokenize(tokens), "sentence", seconds)])


# --- transcription ----------------------------------------------------------------------------

def test_completed_items_equal_offline_transcripts_and_deltas_come_before_speech_ends(
        model, client, two_utterances):
    client.send({"type": "transcription_session.update", "session": {
        "input_audio_format": PCM16K, "turn_detection": {"type": "server_vad", "silence_duration_ms": 600}}})
    client.wait("transcription_session.updated")
    sent = client.stream(two_utterances)
    completed = client.wait("conversation.item.input_audio_transcription.completed", 2)
    audio = two_utterances.astype(np.float32) / 32768
    for item in completed:
        start, end = round(item["audio_start_s"] * SR), round(item["audio_end_s"] * SR)
        assert item["transcript"] == offline_text(model, audio[start:end])
        assert item["transcript"]  # a random model still writes something
    first_speech_end = int((1.2 + 9) * SR)
    end_sent_at = sent[first_speech_end // int(BLOCK_S * SR)]
    first_delta_at = next(t for t, e in client.events
                          if e["type"] == "conversation.item.input_audio_transcription.delta")
    assert first_delta_at < end_sent_at  # partials while the first utterance is still being spoken
    kinds = client.kinds()
    for item in completed:  # each turn: started, stopped, committed, completed, in that order
        turn = [e["type"] for _, e in client.events if e.get("item_id") == item["item_id"]
                and not e["type"].endswith(".delta")]
        assert turn == ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                        "input_audio_buffer.committed", "conversation.item.input_audio_transcription.completed"]
    assert kinds.count("input_audio_buffer.speech_started") == 2
    committed = client.of("input_audio_buffer.committed")
    assert committed[1]["previous_item_id"] == committed[0]["item_id"]


def test_manual_turns_at_24_khz_commit_and_clear(client, speech):
    from edge_runtime.audio import resample

    client.send({"type": "session.update", "session": {"input_audio_format": "pcm16", "turn_detection": None}})
    assert client.wait("session.updated")[0]["session"]["turn_detection"] is None
    client.send({"type": "input_audio_buffer.commit", "event_id": "empty"})
    error = client.wait("error")[0]["error"]
    assert error["code"] == "input_audio_buffer_commit_empty" and error["event_id"] == "empty"
    at_24k = pcm16(resample(speech[: 5 * SR], SR, 24000))
    client.stream(at_24k, rate=24000, paced=False)
    client.send({"type": "input_audio_buffer.clear"})
    client.wait("input_audio_buffer.cleared")
    client.stream(at_24k, rate=24000, paced=False)
    client.send({"type": "input_audio_buffer.commit"})
    item = client.wait("conversation.item.input_audio_transcription.completed")[0]
    assert item["transcript"]
    assert item["audio_end_s"] - item["audio_start_s"] == pytest.approx(5.0, abs=0.05)  # only the second
    assert "input_audio_buffer.speech_started" not in client.kinds()  # no voice detection asked for
    client.send({"type": "session.update", "session": {"input_audio_format": PCM16K}})
    assert client.wait("error", 2)[1]["error"]["code"] == "session_locked"


def test_bad_events_get_openai_errors_and_the_session_goes_on(client):
    client.ws.send("{not json")
    client.send({"type": "conversation.item.create", "event_id": "e1"})
    client.send({"type": "input_audio_buffer.append", "audio": "@@@"})
    client.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()})
    client.send({"type": "input_audio_buffer.append", "audio": "A" * 70_000})
    client.send({"type": "session.update", "session": {"input_audio_format": "g711_ulaw"}})
    client.send({"type": "session.update", "session": {"turn_detection": {"type": "semantic_vad"}}})
    client.send({"type": "response.create", "response": {}})
    errors = [e["error"] for e in client.wait("error", 8)]
    assert [e["code"] for e in errors] == [
        "invalid_json", "unknown_event", "invalid_value", "invalid_value", "message_too_large",
        "unsupported_audio_format", "unsupported_turn_detection", "missing_instructions"]
    assert errors[1]["event_id"] == "e1" and all(e["type"] == "invalid_request_error" for e in errors)
    assert all(e["message"] for e in errors)
    client.send({"type": "session.update", "session": {"input_audio_format": PCM16K}})
    assert client.wait("session.updated")[0]["session"]["input_audio_format"] == PCM16K


def test_sessions_are_bounded_keyed_and_freed_at_disconnect(server, speech):
    wrong = Client(server, key="wrong")
    wrong.wait("error")
    wrong.reader.join(30)
    assert wrong.of("error")[0]["error"]["code"] == "invalid_api_key" and wrong.ws.close_code == 1008
    first = Client(server)
    first.wait("session.created")
    second = Client(server)
    refused = second.wait("error")[0]["error"]
    second.reader.join(30)
    assert refused["code"] == "session_limit" and "retry later" in refused["message"]
    assert second.ws.close_code == 1013 and not second.of("session.created")
    # mid-utterance, the model busy: the disconnect frees the slot for the next client
    first.send({"type": "session.update", "session": {"input_audio_format": PCM16K}})
    first.stream(pcm16(speech[: 6 * SR]), paced=False)
    first.close()
    deadline = time.monotonic() + 60
    while True:  # the server sees the close a moment later; until then a new client is refused
        third = Client(server)
        welcome = third.wait_any()
        third.close()
        if welcome == "session.created":
            break
        assert third.of("error")[0]["error"]["code"] == "session_limit"
        assert time.monotonic() < deadline, "the session was not freed"


# --- questions --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def loud_start(speech) -> np.ndarray:
    """7 s of speech, quieter after its first 4 s: two utterances (the speech pauses at 1.4 s),
    the second 5.6 s long with its loudest frame in its first chunk, so that the live front
    end's running clamp equals the offline one and offline `ask` sees the same rows."""
    utterance = np.concatenate([speech[: 4 * SR], 0.25 * speech[4 * SR: 7 * SR]])
    gap = np.zeros(SR, dtype=np.float32)
    return pcm16(np.concatenate([gap, utterance, gap])).astype(np.float32) / 32768


QUESTION = "What did the speaker ask for?"


def test_live_ask_equals_offline_ask_without_encoding_or_prefilling_audio(idle_model, loud_start, monkeypatch):
    model = idle_model
    session, _ = run_session(model, loud_start, block=640)
    start, end, _ = session.closed_windows[-1]  # the utterance that just ended
    window = loud_start[start:end]
    assert end - start > 5 * SR  # two encoder chunks
    assert np.array_equal(running_max_mel(window), log_mel_spectrogram(window))  # the clip's premise
    encoded, embedded = [], []
    monkeypatch.setattr(model.engine.encoder, "encode_chunks",
                        lambda *a, _f=model.engine.encoder.encode_chunks: encoded.append(1) or _f(*a))
    llm = model.engine._llm
    monkeypatch.setattr(llm, "eval_embeddings", lambda *a, _f=llm.eval_embeddings: embedded.append(1) or _f(*a))
    live = session.ask_stream(QUESTION, max_tokens=20)
    deltas = "".join(d.text for d in live)
    assert encoded == [] and embedded == []  # the audio was already in the KV cache
    again = session.ask_stream("How many people speak?", max_tokens=20)  # a follow-up costs the same
    list(again)
    assert encoded == [] and embedded == []
    monkeypatch.undo()
    offline = model.ask(window, QUESTION, max_tokens=20)
    assert live.answer.token_ids == offline.token_ids and live.answer.text == offline.text == deltas.strip()
    assert live.answer.prompt_tokens == offline.prompt_tokens


def test_response_create_answers_from_the_sessions_audio(model, served, client, loud_start):
    client.send({"type": "session.update", "session": {"input_audio_format": PCM16K}})
    client.stream(pcm16(loud_start), paced=False)
    item = client.wait("conversation.item.input_audio_transcription.completed", 2)[-1]
    client.send({"type": "response.create", "response": {"instructions": QUESTION, "max_output_tokens": 20}})
    done = client.wait("response.done")[0]["response"]
    start, end = round(item["audio_start_s"] * SR), round(item["audio_end_s"] * SR)
    wait_for(lambda: served[1].state.flight.jobs == 0, seconds=60)  # the model serves one thread at a time
    offline = model.ask(loud_start[start:end], QUESTION, max_tokens=20)
    text = done["output"][0]["content"][0]["text"]
    assert text == offline.text == client.wait("response.text.done")[0]["text"]
    assert "".join(e["delta"] for e in client.of("response.text.delta")).strip() == text
    assert done["usage"]["input_tokens"] == offline.prompt_tokens and done["timings"]["encode_s"] == 0.0


# --- the right words (nano) -------------------------------------------------------------------

def test_nano_over_the_socket_hears_the_demo_sentences():
    nano = MossAudio("nano", threads=2)
    clip = demo_clip(load_bundle("nano"))
    with running(nano) as (base, _):
        client = Client(base)
        client.send({"type": "session.update", "session": {"input_audio_format": PCM16K}})
        client.stream(pcm16(np.concatenate([clip.audio, np.zeros(SR, np.float32)])))
        items = client.wait("conversation.item.input_audio_transcription.completed", len(DEMO_SENTENCES))
        client.close()
    heard = corpus.words(" ".join(i["transcript"] for i in items))
    truth = corpus.words(" ".join(DEMO_SENTENCES))
    card = next(r for r in load_bundle("nano").manifest.model_card["quality"]["rows"] if r["set"] == "clean")
    assert corpus.word_errors(truth, heard) / len(truth) <= card["wer"] + 0.24, heard  # test_nano's demo bound
    for item, sentence in zip(items, clip.sentences):  # one item per spoken sentence, timed on its audio
        assert item["audio_start_s"] <= sentence.start and sentence.end <= item["audio_end_s"] + 0.05


def test_listen_answers_questions_typed_on_stdin(tiny_bundles, speech, tmp_path):
    import soundfile as sf
    from cli_helpers import MOSS_EDGE

    audio = pcm16(np.concatenate([np.zeros(SR // 2, np.float32), speech[: 3 * SR], np.zeros(SR, np.float32)]))
    wav = tmp_path / "one_utterance.wav"
    sf.write(wav, audio, SR, subtype="PCM_16")
    result = subprocess.run([str(MOSS_EDGE), "listen", str(tiny_bundles["k2"]), "--input", str(wav), "--realtime",
                             "--format", "jsonl", "--threads", "1", "--no-loop-guard", "--n-ctx", "4096"],
                            input=QUESTION + "\n", capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    (reply,) = [line for line in lines if line["type"] == "answer"]
    # The same session in this process: with the CLI's f16 cache, cells reused after readouts
    # round differently from a fresh offline prompt, so exact equality with offline `ask` is
    # the f32 test above; here the CLI must give what the live session gives.
    model = MossAudio(tiny_bundles["k2"], threads=1, n_ctx=4096, loop_guard=None)
    session, _ = run_session(model, audio.astype(np.float32) / 32768)
    assert len(session.closed_windows) == 1
    assert [line["vad"] for line in lines if "vad" in line] == ["speech", "silence"]
    live = session.ask_stream(QUESTION)
    list(live)
    assert reply == {"type": "answer", "question": QUESTION, "text": live.answer.text}
