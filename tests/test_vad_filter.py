"""Skipped silence offline (`vad_filter=True`, `--vad`): only the speech the VAD finds reaches
the model, and every time comes back on the file's clock, inside the speech."""
from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.features import SAMPLE_RATE
from edge_runtime.speech import Utterance, Voice, place, synthesize, to_int16
from edge_runtime.transcribe import MossAudio
from edge_runtime.windows import SpeechFilter, Window, plan_speech_windows, speech_spans

from fake_generation import script_outputs

VOICE = Voice("en-us", "m3", 150, 50)
COMMANDS = ["turn on the kitchen lights", "set a timer for five minutes", "what time is it", "close the gate"]
STARTS = [1.0, 9.0, 19.5, 23.0]  # long silences between the first three, a short one before the last


@pytest.fixture(scope="module")
def clip():
    return place([Utterance(text, VOICE, to_int16(synthesize(text, VOICE))) for text in COMMANDS], STARTS,
                 tail_s=4.0)


def s(seconds: float) -> int:
    return int(round(seconds * SAMPLE_RATE))


def test_times_in_joined_spans_map_back_to_the_file():
    window = Window(0, s(2.0), s(12.0), spans=((s(2.0), s(4.0)), (s(10.0), s(12.0))))
    assert window.duration_s == 4.0
    assert window.file_time(0.5) == 2.5
    assert window.file_time(2.0, is_end=True) == 4.0  # where the spans meet: the end of the first
    assert window.file_time(2.0) == 10.0  # and the start of the second
    assert window.file_time(3.25) == 11.25
    assert window.file_time(4.5, is_end=True) == 12.5  # past the audio: as far past its end
    plain = Window(0, s(30.0), s(60.0))
    assert plain.file_time(1.234) == 31.234 and plain.duration_s == 30.0


def test_speech_spans_cover_each_utterance_and_leave_out_long_silences(clip):
    spans = speech_spans(clip.audio)
    for sentence in clip.sentences:  # every utterance lies inside one span
        assert any(a / SAMPLE_RATE <= sentence.start and sentence.end <= b / SAMPLE_RATE for a, b in spans)
    kept = sum(b - a for a, b in spans) / len(clip.audio)
    assert kept < 0.6  # the long silences are gone
    windows = plan_speech_windows(clip.audio, window_seconds=30.0)
    assert len(windows) == 1 and windows[0].spans == tuple(spans)  # all the speech fits one window


def test_a_long_span_is_cut_into_windows_no_longer_than_asked(clip):
    windows = plan_speech_windows(clip.audio, window_seconds=6.0, search_seconds=2.0)
    assert all(w.duration_s <= 6.0 for w in windows)
    joined = [span for w in windows for span in w.parts]
    assert joined == sorted(joined) and all(a[1] <= b[0] for a, b in zip(joined, joined[1:]))


def test_the_models_times_come_back_on_the_files_clock_inside_the_speech(tiny_bundles, clip, monkeypatch):
    model = MossAudio(tiny_bundles["k1"], threads=1)
    window = plan_speech_windows(clip.audio)[0]
    joined_ends = np.cumsum([(b - a) / SAMPLE_RATE for a, b in window.parts])
    # the model (scripted) times each utterance by the joined audio it heard
    stamps = [0.0, *joined_ends]
    text = "".join(f"[{stamps[i]:.2f}]{COMMANDS[i]}[{stamps[i + 1]:.2f}]" for i in range(len(window.parts)))
    script_outputs(monkeypatch, model, [text])
    segments, info = model.transcribe(clip.audio, vad_filter=True)
    segments = list(segments)
    assert info.speech_s == pytest.approx(window.duration_s, abs=1e-3) and info.speech_s < info.duration / 2
    for segment, (a, b) in zip(segments, window.parts):
        assert (segment.start, segment.end) == (round(a / SAMPLE_RATE, 3), round(b / SAMPLE_RATE, 3))


def test_nano_transcribes_the_speech_with_pauses_skipped(clip):
    model = MossAudio("nano", threads=1)
    skipped, info = model.transcribe(clip.audio, vad_filter=True)
    skipped = list(skipped)
    assert " ".join(x.text for x in skipped).lower().replace(".", "") == " ".join(COMMANDS)
    assert info.speech_s < 0.6 * info.duration
    spans = [(a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in speech_spans(clip.audio, SpeechFilter())]
    for segment in skipped:  # each time lies in the speech fed to the model
        for t in (segment.start, segment.end):
            assert any(a - 0.05 <= t <= b + 0.05 for a, b in spans), (t, spans)
    truth = [(x.start, x.end) for x in clip.sentences]
    assert len(skipped) == len(truth)
    assert max(abs(x.start - t[0]) + abs(x.end - t[1]) for x, t in zip(skipped, truth)) < 0.6
