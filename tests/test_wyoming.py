"""`moss-edge wyoming` driven by the `wyoming` client library over real TCP, as Home Assistant
and its satellites drive it: describe -> info, transcribe + audio-start / -chunk / -stop ->
transcript-start, transcript-chunk(s), transcript, transcript-stop, with the embedded nano model
(the right words) on audio at the rates, widths and channel counts satellites record."""
from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Iterator

import numpy as np
import pytest
from cli_helpers import MOSS_EDGE, assert_bad_input
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info

from edge_runtime import __version__
from edge_runtime.audio import resample
from edge_runtime.cli.demo import DEMO_SENTENCES
from edge_runtime.features import SAMPLE_RATE
from edge_runtime.speech import Utterance, Voice, place, synthesize, to_int16
from edge_runtime.transcribe import MossAudio
from edge_runtime.wyoming_server import WyomingConfig, serve

VOICE = Voice("en-us", "m3", 150, 50)
FIRST, SECOND = DEMO_SENTENCES[0], DEMO_SENTENCES[4]  # "turn on the kitchen lights", "open the garage door"
CHUNK_S = 0.1  # satellites send 10-100 ms chunks
READ_TIMEOUT_S = 60  # generous for 2 shared cores; a hung server fails the test instead of CI


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def model() -> Iterator[MossAudio]:
    nano = MossAudio("nano", threads=2)
    yield nano
    nano.close()


@contextlib.contextmanager
def running(model: MossAudio, config: WyomingConfig) -> Iterator[int]:
    """The server on its own event loop in a thread, on a free TCP port; yields the port."""
    port = free_port()
    loop = asyncio.new_event_loop()
    task = loop.create_task(serve(model, config, f"tcp://127.0.0.1:{port}"))
    thread = threading.Thread(target=lambda: loop.run_until_complete(asyncio.wait([task])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            break
        assert time.monotonic() < deadline and thread.is_alive(), "wyoming server did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(30)
        loop.close()


@pytest.fixture(scope="module")
def port(model: MossAudio) -> Iterator[int]:
    with running(model, WyomingConfig(model_id="nano", languages=("en",))) as bound:
        yield bound


@pytest.fixture(scope="module")
def command() -> np.ndarray:
    """FIRST spoken by espeak-ng with 0.4 s of silence either side: 16 kHz float32."""
    return place([Utterance(FIRST, VOICE, to_int16(synthesize(FIRST, VOICE)))], [0.4]).audio


def as_pcm(audio: np.ndarray, rate: int, width: int, channels: int) -> bytes:
    """16 kHz float audio as a satellite would send it: `rate` Hz, `width`-byte signed
    little-endian samples, `channels` interleaved copies (the second one at half level)."""
    at_rate = resample(audio, SAMPLE_RATE, rate).astype(np.float64)
    frames = np.stack([at_rate * (1.0 if c == 0 else 0.5) for c in range(channels)], axis=1)
    scale = 2 ** (8 * width - 1)
    ints = np.clip(np.round(frames * scale), -scale, scale - 1).astype("<i4").reshape(-1)
    if width == 4:
        return ints.astype("<i4").tobytes()
    if width == 3:  # the low three bytes of each little-endian int32
        return ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    return ints.astype({1: "i1", 2: "<i2"}[width]).tobytes()


async def send_audio(client: AsyncTcpClient, pcm: bytes, rate: int, width: int, channels: int) -> None:
    step = int(CHUNK_S * rate) * width * channels
    for lo in range(0, len(pcm), step):
        await client.write_event(AudioChunk(rate=rate, width=width, channels=channels, audio=pcm[lo:lo + step]).event())


async def read_until(client: AsyncTcpClient, last_type: str) -> list[Event]:
    events = []
    while not events or events[-1].type != last_type:
        event = await client.read_event()
        assert event is not None, f"connection closed after {[e.type for e in events]}"
        events.append(event)
    return events


async def transcribe(port: int, pcm: bytes, rate: int, width: int, channels: int) -> list[Event]:
    """One utterance as Home Assistant sends it; every event until transcript-stop."""
    async with AsyncTcpClient("127.0.0.1", port, read_timeout=READ_TIMEOUT_S) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
        await send_audio(client, pcm, rate, width, channels)
        await client.write_event(AudioStop().event())
        return await read_until(client, TranscriptStop().event().type)


def test_describe_reports_an_asr_program(port: int):
    async def describe() -> Info:
        async with AsyncTcpClient("127.0.0.1", port, read_timeout=READ_TIMEOUT_S) as client:
            await client.write_event(Describe().event())
            return Info.from_event(await client.read_event())

    program = asyncio.run(describe()).asr[0]
    assert program.name == "moss-audio-edge" and program.version == __version__ and program.installed
    assert program.supports_transcript_streaming
    assert [(m.name, m.languages) for m in program.models] == [("nano", ["en"])]


@pytest.mark.parametrize(("rate", "width", "channels"),
                         [(16000, 2, 1), (22050, 2, 1), (48000, 2, 2), (44100, 3, 2), (48000, 4, 1), (16000, 1, 1)])
def test_transcript_in_the_right_words_at_any_format(port: int, command: np.ndarray, rate: int, width: int,
                                                     channels: int):
    events = asyncio.run(transcribe(port, as_pcm(command, rate, width, channels), rate, width, channels))
    types = [e.type for e in events]
    assert types[0] == TranscriptStart().event().type and types[-2:] == ["transcript", "transcript-stop"], types
    text = Transcript.from_event(events[-2]).text
    assert text.lower().strip(" .") == FIRST, text
    chunks = [TranscriptChunk.from_event(e).text for e in events if TranscriptChunk.is_type(e.type)]
    assert "".join(chunks) == text and Transcript.from_event(events[-2]).language == "en"


def test_transcript_is_the_listen_pipelines(port: int, model: MossAudio, command: np.ndarray):
    """The same StreamingSession as `moss-edge listen`: the same finals, token for token."""
    events = asyncio.run(transcribe(port, as_pcm(command, SAMPLE_RATE, 2, 1), SAMPLE_RATE, 2, 1))
    pcm16 = np.frombuffer(as_pcm(command, SAMPLE_RATE, 2, 1), "<i2") / 32768.0
    finals = [e.text for e in model.stream([pcm16.astype(np.float32)]) if e.type == "final"]
    assert Transcript.from_event(events[-2]).text == " ".join(finals)


def test_a_finished_sentence_is_streamed_before_the_audio_stops(port: int):
    """After the first command and a pause, its text arrives while the satellite still streams."""
    first = to_int16(synthesize(FIRST, VOICE)).astype(np.float32) / 32768
    second = to_int16(synthesize(SECOND, VOICE)).astype(np.float32) / 32768
    pause = np.zeros(int(1.5 * SAMPLE_RATE), np.float32)
    head = as_pcm(np.concatenate([pause[:8000], first, pause]), SAMPLE_RATE, 2, 1)
    tail = as_pcm(np.concatenate([second, pause[:8000]]), SAMPLE_RATE, 2, 1)

    async def talk() -> tuple[list[Event], list[Event]]:
        async with AsyncTcpClient("127.0.0.1", port, read_timeout=READ_TIMEOUT_S) as client:
            await client.write_event(Transcribe().event())
            await client.write_event(AudioStart(rate=SAMPLE_RATE, width=2, channels=1).event())
            await send_audio(client, head, SAMPLE_RATE, 2, 1)
            early = await read_until(client, TranscriptChunk(text="").event().type)  # no audio-stop yet
            await send_audio(client, tail, SAMPLE_RATE, 2, 1)
            await client.write_event(AudioStop().event())
            return early, await read_until(client, TranscriptStop().event().type)

    early, late = asyncio.run(talk())
    assert [e.type for e in early] == ["transcript-start", "transcript-chunk"]
    assert early[-1].data["text"].lower().strip(" .") == FIRST
    chunks = [e.data["text"] for e in early + late if TranscriptChunk.is_type(e.type)]
    text = Transcript.from_event(late[-2]).text
    assert "".join(chunks) == text and SECOND in text.lower(), (chunks, text)


def test_bad_audio_gets_an_error_and_the_server_serves_on(port: int, command: np.ndarray):
    async def bad(start: AudioStart, chunk: AudioChunk | None = None) -> Error:
        async with AsyncTcpClient("127.0.0.1", port, read_timeout=READ_TIMEOUT_S) as client:
            await client.write_event(start.event())
            if chunk is not None:
                await client.write_event(chunk.event())
            event = await client.read_event()
            while not Error.is_type(event.type):  # transcript-start comes first for a good start
                event = await client.read_event()
            return Error.from_event(event)

    assert "sample width must be 1, 2, 3 or 4" in asyncio.run(bad(AudioStart(rate=16000, width=5, channels=1))).text
    assert "sample rate 500 Hz" in asyncio.run(bad(AudioStart(rate=500, width=2, channels=1))).text
    odd = AudioChunk(rate=16000, width=2, channels=2, audio=b"\0" * 6)
    assert "not whole frames" in asyncio.run(bad(AudioStart(rate=16000, width=2, channels=2), odd)).text
    other = AudioChunk(rate=8000, width=2, channels=1, audio=b"\0" * 4)
    assert "audio-start said 16000" in asyncio.run(bad(AudioStart(rate=16000, width=2, channels=1), other)).text
    events = asyncio.run(transcribe(port, as_pcm(command, SAMPLE_RATE, 2, 1), SAMPLE_RATE, 2, 1))
    assert Transcript.from_event(events[-2]).text.lower().strip(" .") == FIRST


def test_a_client_gone_mid_utterance_frees_the_model(port: int, command: np.ndarray):
    async def leave() -> None:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(AudioStart(rate=SAMPLE_RATE, width=2, channels=1).event())
            await send_audio(client, as_pcm(command[:SAMPLE_RATE], SAMPLE_RATE, 2, 1), SAMPLE_RATE, 2, 1)
            await client.read_event()  # transcript-start: the utterance holds the model now

    asyncio.run(leave())
    events = asyncio.run(transcribe(port, as_pcm(command, SAMPLE_RATE, 2, 1), SAMPLE_RATE, 2, 1))
    assert Transcript.from_event(events[-2]).text.lower().strip(" .") == FIRST


def test_two_satellites_at_once_each_get_their_transcript(port: int, command: np.ndarray):
    async def both() -> list[list[Event]]:
        return await asyncio.gather(transcribe(port, as_pcm(command, 16000, 2, 1), 16000, 2, 1),
                                    transcribe(port, as_pcm(command, 48000, 2, 2), 48000, 2, 2))

    for events in asyncio.run(both()):
        assert Transcript.from_event(events[-2]).text.lower().strip(" .") == FIRST


def test_without_transcript_streaming_only_the_transcript_is_sent(model: MossAudio, command: np.ndarray):
    with running(model, WyomingConfig(model_id="nano", streaming=False)) as plain:
        async def exchange() -> list[str]:
            async with AsyncTcpClient("127.0.0.1", plain, read_timeout=READ_TIMEOUT_S) as client:
                await client.write_event(Describe().event())
                assert not Info.from_event(await client.read_event()).asr[0].supports_transcript_streaming
                await client.write_event(AudioStart(rate=SAMPLE_RATE, width=2, channels=1).event())
                await send_audio(client, as_pcm(command, SAMPLE_RATE, 2, 1), SAMPLE_RATE, 2, 1)
                await client.write_event(AudioStop().event())
                await client.write_event(Describe().event())  # what follows the transcript
                return [(await client.read_event()).type for _ in range(2)]

        assert asyncio.run(exchange()) == ["transcript", "info"]


def test_moss_edge_wyoming_serves_then_stops_on_sigterm():
    port = free_port()
    server = subprocess.Popen([str(MOSS_EDGE), "wyoming", "nano", "--uri", f"tcp://127.0.0.1:{port}",
                               "--threads", "2", "--language", "en", "--language", "zh"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        async def describe() -> Info:
            deadline = time.monotonic() + 60
            while True:
                assert server.poll() is None, server.communicate()
                try:
                    async with AsyncTcpClient("127.0.0.1", port, read_timeout=READ_TIMEOUT_S) as client:
                        await client.write_event(Describe().event())
                        return Info.from_event(await client.read_event())
                except OSError:
                    assert time.monotonic() < deadline, "moss-edge wyoming did not come up"
                    await asyncio.sleep(0.2)

        assert asyncio.run(describe()).asr[0].models[0].languages == ["en", "zh"]
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, stderr
    assert f"wyoming: nano at tcp://127.0.0.1:{port}" in stderr


def test_a_bad_uri_or_a_taken_port_is_one_error_line(port: int):
    result = subprocess.run([str(MOSS_EDGE), "wyoming", "nano", "--uri", "http://127.0.0.1:1"],
                            capture_output=True, text=True, timeout=120)
    assert_bad_input(result, "--uri 'http://127.0.0.1:1'", "tcp://")
    result = subprocess.run([str(MOSS_EDGE), "wyoming", "nano", "--uri", f"tcp://127.0.0.1:{port}"],
                            capture_output=True, text=True, timeout=120)
    assert_bad_input(result, f"cannot listen at tcp://127.0.0.1:{port}", "in use")


@pytest.mark.parametrize("missing", ["wyoming", "webrtcvad"])
def test_without_the_wyoming_extra_it_says_which_extra(missing: str):
    blocked = f"""
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == {missing!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Blocked())
from edge_runtime.cli import main
sys.exit(main(sys.argv[1:]))
"""
    result = subprocess.run([sys.executable, "-c", blocked, "wyoming", "nano"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 4, result.stderr
    assert f"error: {missing} is not installed" in result.stderr and "moss-audio-edge[wyoming]" in result.stderr
