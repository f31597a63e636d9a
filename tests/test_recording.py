"""`listen --record`: the WAV file holds everything captured, opens while it is being written,
and survives SIGKILL with all but the last second; a bad path is a clear error before any
capture."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from edge_runtime.audio import load_audio
from edge_runtime.errors import InputError
from edge_runtime.recording import RecordingError, WavRecorder

from cli_helpers import MOSS_EDGE, assert_bad_input, moss_edge

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from soak import speech_with_pauses  # noqa: E402

SR = 16000


@pytest.fixture(scope="module")
def commands_wav(tmp_path_factory) -> Path:
    """A minute of spoken commands with pauses."""
    path = tmp_path_factory.mktemp("recording") / "commands.wav"
    soundfile.write(path, speech_with_pauses(60.0, seed=5, distinct=8).audio, SR, subtype="PCM_16")
    return path


def test_recording_is_readable_while_written_and_exact_when_closed(tmp_path):
    audio = (np.random.default_rng(0).uniform(-0.9, 0.9, 5 * SR)).astype(np.float32)
    recorder = WavRecorder(tmp_path / "r.wav")
    assert soundfile.info(tmp_path / "r.wav").frames == 0  # a valid file from the start
    blocks = np.split(audio, 50)  # 0.1 s each
    for block in blocks[:35]:
        recorder.write(block)
    frames = soundfile.info(tmp_path / "r.wav").frames  # still open: what was flushed
    assert 2.5 * SR <= frames <= recorder.samples and frames % 1600 == 0
    for block in blocks[35:]:
        recorder.write(block)
    recorder.close()
    recorded, rate = soundfile.read(tmp_path / "r.wav", dtype="float32")
    assert rate == SR and len(recorded) == len(audio)
    assert np.abs(recorded - audio).max() <= 1 / 32767


def test_a_bad_recording_path_is_an_input_error(tmp_path):
    with pytest.raises(RecordingError, match="missing"):
        WavRecorder(tmp_path / "missing" / "r.wav")
    with pytest.raises(InputError, match="only .wav"):
        WavRecorder(tmp_path / "r.mp3")


def test_listen_refuses_a_bad_record_path_and_a_source_that_is_not_live(tmp_path, commands_wav):
    result = moss_edge("listen", "nano", "--input", str(commands_wav), "--realtime",
                       "--record", str(tmp_path / "no" / "r.wav"))
    assert_bad_input(result, "cannot record to", str(tmp_path / "no" / "r.wav"))
    result = moss_edge("listen", "nano", "--input", str(commands_wav), "--record", str(tmp_path / "r.wav"))
    assert result.returncode == 2 and "--record needs a live source" in result.stderr
    assert not (tmp_path / "r.wav").exists()


def test_a_recording_survives_sigkill_with_all_but_the_last_second(tmp_path, commands_wav):
    """A real `listen --record` killed with SIGKILL: the file opens, and holds at least all the
    audio up to one second before the last event the process wrote (which it had heard)."""
    record = tmp_path / "killed.wav"
    process = subprocess.Popen([str(MOSS_EDGE), "listen", "nano", "--input", str(commands_wav), "--pace", "4",
                                "--record", str(record), "--format", "jsonl", "--threads", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    heard, finals = 0.0, 0
    for line in process.stdout:
        event = json.loads(line)
        heard = max([heard] + [event[k] for k in ("end", "at") if event.get(k) is not None])
        finals += event["type"] == "final"
        if finals == 3:
            break
    process.kill()
    assert process.wait(timeout=30) == -9
    recorded, rate = soundfile.read(record, dtype="float32")
    source = load_audio(commands_wav)
    assert heard > 5.0 and len(recorded) / rate >= heard - 1.1  # a flush per second, a 0.1 s block
    assert len(recorded) < len(source)  # killed before the end: a partial file, and readable
    assert np.array_equal(recorded, source[: len(recorded)])  # PCM_16 in, PCM_16 out: exact
