"""The repetition-loop guard: it stops a decode that loops (the real decode loop, with the
model's logits steered into a loop), trims the loop from the text, says "repetition", and
leaves output without a loop untouched (the nano model's held-out transcripts)."""
from __future__ import annotations

import json
import weakref

import numpy as np
import pytest

from edge_runtime.engine import Sequence
from edge_runtime.formats import write_transcript
from edge_runtime.loop_guard import LoopGuard, LoopGuardConfig
from edge_runtime.transcribe import MossAudio

CONFIG = LoopGuardConfig()


def fed(tokens: list[int], token_bytes=None, audio_s: float = float("inf")) -> LoopGuard:
    guard = LoopGuard(CONFIG, token_bytes, audio_s)
    for token in tokens:
        if guard.add(token):
            break
    return guard


def test_a_repeated_span_trips_once_it_covers_enough_tokens_and_the_first_copy_is_kept():
    head = [1, 2, 3, 4, 5]
    span = [7, 8, 9]  # 3 tokens: 16 copies make the 48 tokens
    guard = fed(head + span * 40)
    assert guard.tripped
    assert len(guard.tokens) == len(head) + 3 * 16
    assert guard.kept(guard.tokens) == head + span


def test_short_repeats_and_varied_text_are_not_loops():
    assert not fed([5] * 40).tripped  # a token said 40 times: under the 48-token floor
    assert not fed([1, 2] * 23).tripped  # 46 tokens of a 2-token span
    assert not fed(list(range(1000))).tripped
    long_span = list(range(100, 140))  # 40 tokens repeated 3 times: under 4 copies
    assert not fed(long_span * 3).tripped
    assert fed(long_span * 4).tripped


def _byte_tokens(text: str) -> tuple[list[int], callable]:
    """Text as one token per byte, and the token -> bytes map."""
    return list(text.encode()), lambda t: bytes([t])


def test_segments_whose_times_stop_moving_trip_and_keep_the_last_progress():
    good = "[0.00]one two[1.50][1.50]three[2.40]"
    stalled = "".join(f"[2.40]word {i}[2.40]" for i in range(6))  # times stay put, text changes
    tokens, to_bytes = _byte_tokens(good + stalled)
    guard = fed(tokens, to_bytes)
    assert guard.tripped
    assert bytes(guard.kept(guard.tokens)).decode() == good


def test_times_past_the_audio_make_no_progress():
    tokens, to_bytes = _byte_tokens("[0.00]a[1.00]" + "".join(f"[{t}.00]b {t}[{t + 1}.00]" for t in range(5, 12)))
    assert fed(tokens, to_bytes, audio_s=3.0).tripped
    assert not fed(tokens, to_bytes).tripped  # no audio length: advancing times are progress


# --- the real decode loop with the model's logits steered into a loop ------------------------

@pytest.fixture(scope="module")
def model(tiny_bundles) -> MossAudio:
    return MossAudio(tiny_bundles["k2"], threads=1, n_ctx=4096, parallel=2)


@pytest.fixture
def looping(monkeypatch, model):
    """The model writes `prefix` and then `loop` over and over: the logits llama.cpp computes
    at each step get a large bonus on the scripted token. The script restarts whenever more
    than one position is evaluated at once (a prompt, a readout's instruction). Returns the
    scripted ids and a count of the logits asked for."""
    prefix = model.engine.tokenize("[0.00]hello there[1.20]")
    loop = model.engine.tokenize(" la di da")
    real_logits, real_advance = Sequence.logits, Sequence._advance
    steps: weakref.WeakKeyDictionary[Sequence, int] = weakref.WeakKeyDictionary()
    asked = {"n": 0}

    def advance(self: Sequence, n: int, logits: np.ndarray) -> None:
        steps[self] = steps.get(self, 0) + 1 if n == 1 else 0
        real_advance(self, n, logits)

    def logits(self: Sequence) -> np.ndarray:
        values = real_logits(self).copy()
        step = steps.get(self, 0)
        script = prefix[step] if step < len(prefix) else loop[(step - len(prefix)) % len(loop)]
        values[script] = values.max() + 100.0
        asked["n"] += 1
        return values

    monkeypatch.setattr(Sequence, "_advance", advance)
    monkeypatch.setattr(Sequence, "logits", logits)
    return prefix, loop, asked


def test_transcription_stops_at_the_loop_and_goes_on(model, looping, speech, tmp_path):
    prefix, loop, steps = looping
    clip = speech[: 6 * 16000]
    segments, info = model.transcribe(clip, timestamps="sentence", max_tokens=600)
    segments = list(segments)
    assert info.finish_reasons == ["repetition"]
    assert steps["n"] < len(prefix) + 60  # stopped within the guard's 48 tokens, not at 600
    text = " ".join(s.text for s in segments)
    assert text.count("la di da") <= 1 and "hello there" in text
    written = write_transcript(segments, info.duration, None, ["json"], tmp_path, "clip", info.finish_reasons)
    assert json.loads(written[0].read_text())["finish_reasons"] == ["repetition"]  # as the CLI writes it

    model.loop_guard = None
    try:
        segments, info = model.transcribe(clip, timestamps="sentence", max_tokens=600)
        list(segments)
    finally:
        model.loop_guard = CONFIG
    assert info.finish_reasons == ["length"]


def test_windows_decoded_together_each_stop_at_their_loop(model, looping, speech):
    clip = speech[: 10 * 16000]
    segments, info = model.transcribe(clip, timestamps="none", window_seconds=6.0, max_tokens=600)
    list(segments)
    assert len(info.windows) > 1 and info.finish_reasons == ["repetition"] * len(info.windows)


def test_an_answer_in_a_loop_ends_with_finish_reason_repetition(model, looping, speech):
    prefix, loop, _ = looping
    answer = model.ask(speech[: 4 * 16000], "What is said?", max_tokens=500)
    assert answer.finish_reason == "repetition"
    assert answer.token_ids == prefix + loop  # the first copy of the loop stays
    assert answer.text == model.engine.detokenize(prefix + loop).strip()


def test_a_live_readout_in_a_loop_is_cut_and_counted(model, looping, speech):
    session = model.stream_session(use_drafts=False)
    events = list(model.stream([speech[i:i + 8000] for i in range(0, 6 * 16000, 8000)], session=session))
    assert session.readout_stats["loops"] > 0
    finals = " ".join(e.text for e in events if e.type == "final")
    assert finals.count("la di da") <= 1


# --- no false alarms -----------------------------------------------------------------------

def test_the_nano_models_held_out_transcripts_do_not_trip_it():
    from moss_audio_edge.export.nano.corpus import held_out_clips

    nano = MossAudio("nano", threads=1)
    clips = held_out_clips(6, seed=20261126)  # the first of benchmarks/nano_quality.py's clean set
    for clip in clips:
        seconds = len(clip.audio) / 16000
        for text in (clip.timestamped, clip.transcript):  # the true outputs, as the model writes them
            assert not fed(nano.engine.tokenize(text), nano.engine.token_bytes, seconds).tripped, text
    for clip in clips[:3]:  # and what the model writes for them
        segments, info = nano.transcribe(clip.audio, timestamps="sentence")
        with_guard = list(segments)
        assert "repetition" not in info.finish_reasons
        nano.loop_guard = None
        segments, _ = nano.transcribe(clip.audio, timestamps="sentence")
        assert list(segments) == with_guard
        nano.loop_guard = CONFIG
