"""`moss-edge listen` as a user runs it: real PortAudio capture from a PulseAudio null sink's
monitor (speech played into the sink with paplay), a file played at real-time pace, and an
input device that disappears mid-stream."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile
from cli_helpers import MOSS_EDGE

from edge_runtime.audio import load_audio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from soak import out_of_order, score, speech_with_pauses  # noqa: E402


def _pactl(*args: str) -> str:
    return subprocess.run(["pactl", *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def pulse() -> None:
    """A running PulseAudio server (started here when CI has none)."""
    for tool in ("pulseaudio", "pactl", "paplay"):
        assert shutil.which(tool), f"{tool} missing: scripts/setup.sh installs pulseaudio and pulseaudio-utils"
    if subprocess.run(["pactl", "info"], capture_output=True).returncode != 0:
        subprocess.run(["pulseaudio", "--daemonize=yes", "--exit-idle-time=-1", "-n",
                        "--load=module-native-protocol-unix"], check=True, capture_output=True)
        for _ in range(50):
            if subprocess.run(["pactl", "info"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)


@pytest.fixture
def sink(pulse) -> str:
    name = f"moss_test_{uuid.uuid4().hex[:8]}"
    module = _pactl("load-module", "module-null-sink", f"sink_name={name}")
    yield name
    if module in _pactl("list", "short", "modules"):
        _pactl("unload-module", module)


class Listener:
    """`moss-edge listen ... --format jsonl` in the background, its lines timestamped."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        self.lines: list[tuple[float, dict]] = []
        self.process = subprocess.Popen([str(MOSS_EDGE), "listen", *args, "--format", "jsonl"],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env={**os.environ, **(env or {})})
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append((time.monotonic(), json.loads(line)))

    def wait_for(self, predicate, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, event in self.lines:
                if predicate(event):
                    return at
            assert self.process.poll() is None, (self.lines, self.process.stderr.read())
            time.sleep(0.05)
        raise AssertionError(f"no such event within {timeout} s: {self.lines}")

    def finish(self, timeout: float) -> list[dict]:
        assert self.process.wait(timeout=timeout) == 0, self.process.stderr.read()
        self._reader.join(timeout=5)
        return [event for _, event in self.lines]


def check_times(events: list[dict], duration: float) -> None:
    spoken = [e for e in events if e["type"] in ("partial", "final")]
    assert all(0 <= e["start"] <= e["end"] <= duration for e in spoken)
    finals = [e for e in events if e["type"] == "final"]
    assert finals and all(a["end"] <= b["start"] for a, b in zip(finals, finals[1:]))


def test_listen_transcribes_speech_captured_through_portaudio(tiny_bundles, speech_wav, sink):
    listener = Listener(str(tiny_bundles["k2"]), "--mic", "pulse", "--max-seconds", "28",
                        "--threads", "1", env={"PULSE_SOURCE": f"{sink}.monitor"})
    listener.wait_for(lambda e: e.get("state") == "listening", timeout=60)
    subprocess.run(["paplay", f"--device={sink}", str(speech_wav)], check=True, timeout=60)
    playback_end = time.monotonic()
    first_partial = listener.wait_for(lambda e: e["type"] == "partial", timeout=30)
    events = listener.finish(timeout=120)
    assert first_partial < playback_end  # text while the speaker is still talking
    assert any(e.get("vad") == "speech" for e in events)
    check_times(events, duration=28.5)


def test_listen_flushes_the_transcript_when_the_device_vanishes(tiny_bundles, speech_wav, sink):
    others = [line for line in _pactl("list", "short", "sources").splitlines() if sink not in line]
    assert not others, f"other PulseAudio sources would catch the moved stream: {others}"
    listener = Listener(str(tiny_bundles["k2"]), "--mic", "pulse", "--threads", "1",
                        env={"PULSE_SOURCE": f"{sink}.monitor"})
    listener.wait_for(lambda e: e.get("state") == "listening", timeout=60)
    player = subprocess.Popen(["paplay", f"--device={sink}", str(speech_wav)])
    listener.wait_for(lambda e: e["type"] == "partial", timeout=40)
    module = next(line.split()[0] for line in _pactl("list", "short", "modules").splitlines() if sink in line)
    _pactl("unload-module", module)  # the microphone is gone
    player.wait(timeout=30)
    events = listener.finish(timeout=60)
    stopped = [e for e in events if "stopped" in e]
    assert stopped and "no audio" in stopped[0]["stopped"]
    assert events.index(stopped[0]) < max(i for i, e in enumerate(events) if e["type"] == "final")
    check_times(events, duration=30.0)


def test_listen_file_at_realtime_pace(tiny_bundles, speech_wav):
    started = time.monotonic()
    listener = Listener(str(tiny_bundles["k1"]), "--input", str(speech_wav), "--realtime",
                        "--timestamps", "none", "--threads", "1")
    listener.wait_for(lambda e: e.get("state") == "listening", timeout=60)
    listening = time.monotonic()
    first_partial = listener.wait_for(lambda e: e["type"] == "partial", timeout=60)
    events = listener.finish(timeout=120)
    duration = soundfile.info(str(speech_wav)).duration
    assert first_partial - listening < duration - 8.0  # text early on, not only at the end
    assert time.monotonic() - started >= duration - 1.0  # real-time pace
    check_times(events, duration=duration + 0.5)


def test_a_slow_consumer_gets_every_captured_sample_late(sink, speech_wav, monkeypatch, tmp_path):
    """Real capture that the consumer leaves alone for 1.5 s: the blocks wait in the spool
    (spilled to disk past 0.3 s), none is dropped, and the recording holds exactly them."""
    from edge_runtime.capture import microphone_blocks

    monkeypatch.setenv("PULSE_SOURCE", f"{sink}.monitor")
    player = subprocess.Popen(["paplay", f"--device={sink}", str(speech_wav)])
    blocks = microphone_blocks("pulse", block_s=0.1, memory_s=0.3, spool_dir=tmp_path, record=tmp_path / "r.wav")
    try:
        received = [next(blocks)]
        time.sleep(1.5)  # 15 blocks arrive meanwhile
        while sum(len(b.samples) for b in received) < 1.5 * 16000:
            received.append(next(blocks))
    finally:
        blocks.close()
        player.kill()
    assert max(b.spooled_s for b in received) >= 0.8  # waited on disk...
    assert not any(b.dropped_samples or b.xrun for b in received)  # ...and nothing was lost
    assert max(time.monotonic() - b.captured_at for b in received) >= 1.0  # handed out late
    recorded, _ = soundfile.read(tmp_path / "r.wav", dtype="float32")
    handed_out = np.concatenate([b.samples for b in received])
    assert len(recorded) >= len(handed_out)
    assert np.abs(recorded[: len(handed_out)] - handed_out).max() <= 1 / 32768


def test_the_device_queue_overflows_only_when_nobody_drains_it_and_says_so(sink, monkeypatch):
    """Without a LiveCapture's thread, the PortAudio callback still never blocks: when its
    queue is full, input is dropped and the next block reports how much."""
    from edge_runtime.capture import device_blocks

    monkeypatch.setenv("PULSE_SOURCE", f"{sink}.monitor")
    blocks = device_blocks("pulse", block_s=0.1, queue_seconds=0.3)
    try:
        next(blocks)
        time.sleep(1.5)  # 15 blocks arrive, 3 fit
        dropped = sum(next(blocks).dropped_samples for _ in range(5))
    finally:
        blocks.close()
    assert dropped >= 0.8 * 16000


@pytest.fixture(scope="module")
def commands(tmp_path_factory):
    """Three minutes of spoken commands with pauses, and the file."""
    clip = speech_with_pauses(180.0, seed=1, distinct=10)
    path = tmp_path_factory.mktemp("listen") / "commands.wav"
    soundfile.write(path, clip.audio, 16000, subtype="PCM_16")
    return clip, path


def _listen_and_interrupt(path, *args: str, interrupts: int, pace: str = "100") -> Listener:
    """`listen nano --input PATH --pace 100 ...`, sent SIGINT `interrupts` times (0.2 s apart)
    once its first final event is out. Played 100x faster than real time, the file is captured
    faster than nano transcribes it (about 20x on two cores), and not all of it yet."""
    listener = Listener("nano", "--input", str(path), "--pace", pace, "--threads", "1", *args)
    listener.wait_for(lambda e: e["type"] == "final", timeout=120)
    for _ in range(interrupts):
        listener.process.send_signal(signal.SIGINT)
        time.sleep(0.2)
    return listener


def test_ctrl_c_stops_capturing_and_still_transcribes_what_was_captured(commands):
    clip, path = commands
    events = _listen_and_interrupt(path, interrupts=1).finish(timeout=120)
    stopping = next(e for e in events if e.get("state") == "stopping")
    assert stopping["captured_s"] > stopping["heard_s"] + 2.0  # a backlog was waiting
    done = events[-1]
    assert done["state"] == "done" and done["audio_s"] == pytest.approx(stopping["captured_s"], abs=0.11)
    assert done["audio_s"] < len(clip.audio) / 16000 - 5.0  # the capture did stop early
    captured = dataclasses.replace(clip, sentences=[s for s in clip.sentences if s.end < done["audio_s"] - 0.5])
    finals = [e for e in events if e["type"] == "final" and e["start"] < done["audio_s"] - 0.5]
    figures = score(finals, captured)  # every utterance captured before Ctrl-C is finalised, once
    assert figures["utterances"] >= 3 and figures["utterances_finalised"] == figures["utterances"]
    assert figures["utterances_finalised_twice"] == 0 and out_of_order(events) == 0


def test_a_second_ctrl_c_abandons_the_backlog_and_says_where_it_was_recorded(commands, tmp_path):
    clip, path = commands
    record = tmp_path / "kept.wav"
    # Played 1000x faster, the whole file is captured before the first final: the backlog then
    # takes nano seconds to transcribe, so the second SIGINT still finds it however late this
    # busy machine schedules the test between the two (a backlog done first would leave
    # nothing to abandon, and the process exiting when the signal lands)
    listener = _listen_and_interrupt(path, "--record", str(record), interrupts=2, pace="1000")
    assert listener.process.wait(timeout=60) == 130
    message = listener.process.stderr.read().strip().splitlines()[-1]
    left = float(message.split("abandoned: ", 1)[1].split(" s ", 1)[0])
    assert left > 2.0 and f"everything captured is recorded in {record}" in message
    recorded, _ = soundfile.read(record, dtype="float32")
    heard = max(e.get("end") or 0.0 for _, e in listener.lines)
    assert len(recorded) / 16000 >= heard + left - 0.2  # what was heard and what was left, all kept
    assert np.array_equal(recorded, load_audio(path)[: len(recorded)])


def test_readme_demo_listens_to_the_microphone_with_the_nano_model(sink, tmp_path):
    """`moss-edge demo --mic`: the generated clip, then the default microphone (here the null
    sink's monitor) hears commands played into it, and the nano model writes them down."""
    from edge_runtime import speech
    from edge_runtime.bundle import load_bundle
    from moss_audio_edge.export.nano import corpus

    voice = corpus.Voice("en-us", corpus.split_variants().held_out_variants[2], corpus.HELD_OUT_SPEEDS[2], 60)
    texts = ["call my sister", "dial four two seven one", "open the garage door"]
    utterances = [corpus.Utterance(t, voice, corpus.to_int16(corpus.synthesize(t, voice))) for t in texts]
    clip = speech.place(utterances, [0.5, 2.8, 5.6], tail_s=1.0)
    wav = tmp_path / "commands.wav"
    soundfile.write(wav, clip.audio, 16000)
    demo = subprocess.Popen([str(MOSS_EDGE), "demo", "--cache-dir", str(tmp_path), "--mic", "14", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PULSE_SOURCE": f"{sink}.monitor"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(demo.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not any(line.startswith("4. live from") for line in lines):
        assert demo.poll() is None and time.monotonic() < deadline, ("".join(lines), demo.stderr.read())
        time.sleep(0.1)
    time.sleep(1.0)
    subprocess.run(["paplay", f"--device={sink}", str(wav)], check=True, timeout=60)
    assert demo.wait(timeout=120) == 0, demo.stderr.read()
    reader.join(timeout=5)
    live = "".join(lines).split("4. live from", 1)[1]
    finals = [row.split("\r")[-1] for row in live.splitlines()[1:]]  # partials are overwritten in place
    heard = corpus.words(" ".join(row.split("]", 1)[-1] for row in finals))
    truth = corpus.words(" ".join(texts))
    card = next(r for r in load_bundle("nano").manifest.model_card["quality"]["rows"]
                if r["bundle"] == "embedded `nano` bundle" and r["set"] == "clean")
    assert heard and corpus.word_errors(truth, heard) / len(truth) <= card["wer"] + 0.25, live  # 8 words: coarse
