"""Falling behind costs lag, never audio: the spool keeps blocks in order (memory, then a
temporary file), a live capture hands out everything it captured before a stop or a lost
device, and a consumer far slower than its source still finalises every utterance."""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from edge_runtime.capture import DeviceLost, LiveCapture, file_blocks
from edge_runtime.spool import AudioSpool, Block
from edge_runtime.transcribe import MossAudio

from stream_helpers import slowed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from soak import out_of_order, score, speech_with_pauses  # noqa: E402

SR = 16000


def _blocks(count: int, size: int = 1600, seed: int = 0) -> list[Block]:
    rng = np.random.default_rng(seed)
    return [Block(rng.standard_normal(size).astype(np.float32), captured_at=1000.0 + i,
                  dropped_samples=i % 3, xrun=i % 5 == 0) for i in range(count)]


def test_spool_keeps_order_and_bounds_memory_across_spills(tmp_path):
    spool = AudioSpool(memory_s=0.5, directory=tmp_path)  # 5 blocks fit in memory
    sent, got = _blocks(40), []
    for block in sent[:20]:
        spool.put(block)
        assert spool.backlog_s - spool.spooled_s <= 0.5 + 1e-9  # memory stays bounded
    assert spool.spooled_s == pytest.approx(1.5)  # 15 blocks of 0.1 s spilled
    got += [spool.get() for _ in range(8)]  # drains memory, then reads from the file
    for block in sent[20:]:  # the file still holds older audio: newer blocks follow it there
        spool.put(block)
        assert spool.backlog_s - spool.spooled_s <= 0.5 + 1e-9
    spool.close()
    while (block := spool.get()) is not None:
        got.append(block)
    assert len(got) == len(sent)
    for a, b in zip(sent, got):
        assert np.array_equal(a.samples, b.samples)
        assert (a.captured_at, a.dropped_samples, a.xrun) == (b.captured_at, b.dropped_samples, b.xrun)
    assert max(b.spooled_s for b in got) > 1.0 and got[-1].spooled_s == 0.0
    assert spool.backlog_s == 0.0 and os.fstat(spool._file.fileno()).st_size == 0  # disk given back
    assert os.listdir(tmp_path) == []  # the file has no name: nothing is left behind


def test_spool_raises_the_source_error_after_the_audio_before_it():
    spool = AudioSpool(memory_s=0.1)
    for block in _blocks(3):
        spool.put(block)
    spool.close(DeviceLost("unplugged"))
    assert [spool.get() is not None for _ in range(3)] == [True] * 3
    with pytest.raises(DeviceLost, match="unplugged"):
        spool.get()


def test_live_capture_hands_out_what_it_captured_before_the_device_was_lost():
    def source():
        yield from _blocks(30)
        raise DeviceLost("gone")

    capture = LiveCapture(source(), memory_s=0.2)
    received = []
    with pytest.raises(DeviceLost, match="gone"):
        for block in capture:
            received.append(block)
            time.sleep(0.01)  # slower than the source
    assert len(received) == 30 and capture.captured_s == pytest.approx(3.0)


def test_live_capture_stop_keeps_the_backlog_and_ends_the_source():
    closed = threading.Event()

    def endless():
        try:
            for i in range(10**6):
                yield Block(np.full(1600, i, np.float32), time.monotonic())
                time.sleep(0.001)
        finally:
            closed.set()

    capture = LiveCapture(endless(), memory_s=0.5)
    first = next(capture)
    while capture.captured_s < 2.0:  # the consumer idles while 2 s are captured
        time.sleep(0.01)
    capture.stop()
    rest = list(capture)
    values = [int(b.samples[0]) for b in [first, *rest]]
    assert values == list(range(len(values)))  # contiguous: nothing lost
    assert len(values) / 10 >= 2.0 and capture.captured_s == pytest.approx(len(values) / 10)
    assert closed.is_set()  # the source was closed, in the capture thread


def test_a_slow_consumer_drops_nothing_and_reports_lag_and_spool(tmp_path):
    """A paced file captured 20x faster than real time, a session that sleeps before each block:
    the backlog spills to disk, partial readouts are skipped, and the finals are those of a
    run that was never behind."""
    clip = speech_with_pauses(40.0, seed=3, distinct=6)
    wav = tmp_path / "clip.wav"
    soundfile.write(wav, clip.audio, SR, subtype="PCM_16")
    model = MossAudio("nano", threads=1)
    never_behind = [e.to_dict() for e in model.stream(file_blocks(wav, realtime=False))]

    capture = LiveCapture(file_blocks(wav, speed=20.0), memory_s=1.0, spool_dir=tmp_path,
                          record=tmp_path / "recording.wav")
    session = slowed(model.stream_session(), seconds_per_block=0.02)  # 400 blocks: >= 8 s against 2 s
    behind = [e.to_dict() for e in model.stream(capture, session=session)]
    capture.close()

    lag = [e for e in behind if "lag_s" in e]
    assert any(e["readouts"] == "skipped" and e["lag_s"] > 2.0 and e["spooled_s"] > 1.0 for e in lag)
    assert not any("dropped_s" in e or e.get("xrun") for e in behind)
    assert session.clock == len(clip.audio)  # every captured sample was transcribed
    finals = [e for e in behind if e["type"] == "final"]
    assert finals == [e for e in never_behind if e["type"] == "final"]
    figures = score(behind, clip)
    assert figures["utterances_finalised"] == figures["utterances"] and figures["utterances_finalised_twice"] == 0
    assert out_of_order(behind) == 0
    recorded, _ = soundfile.read(tmp_path / "recording.wav", dtype="float32")
    assert len(recorded) == len(clip.audio) and np.abs(recorded - clip.audio).max() <= 1 / 32768
    assert sorted(os.listdir(tmp_path)) == ["clip.wav", "recording.wav"]  # no spool file left
