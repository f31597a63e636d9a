"""Forced output, the benchmarks' mode for random-weight models: the decode loop is fed a given
text (then the stop) while every step is still computed — offline, with parallel windows, and
in the live stream's readouts, whose drafts then verify as a real model's would."""
from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.engine import Sequence
from edge_runtime.llm import LlamaModel
from edge_runtime.transcribe import MossAudio


def spoken(start_s: float, end_s: float) -> str:
    """What a model 'says' about the audio between two file times, in the sentence format."""
    return f"[0.00]from {start_s:.0f} to {end_s:.0f}[{end_s - start_s:.2f}]"


@pytest.fixture
def steps(monkeypatch):
    """Counts the tokens decoding evaluates: one at a time, or one per sequence per batch."""
    counted = {"n": 0}
    eval_tokens, eval_step = Sequence.eval_tokens, LlamaModel.eval_step

    def one_sequence(self, tokens, *args, **kwargs):
        counted["n"] += len(tokens)
        return eval_tokens(self, tokens, *args, **kwargs)

    def together(self, tokens, *args, **kwargs):
        counted["n"] += len(tokens)
        return eval_step(self, tokens, *args, **kwargs)

    monkeypatch.setattr(Sequence, "eval_tokens", one_sequence)
    monkeypatch.setattr(LlamaModel, "eval_step", together)
    return counted


@pytest.mark.parametrize("parallel", [1, 2])
def test_windows_decode_the_forced_text_at_full_cost(tiny_bundles, speech, steps, parallel):
    model = MossAudio(tiny_bundles["k2"], threads=1, parallel=parallel)
    model.forced_output = spoken
    segments, info = model.transcribe(speech[: 20 * 16000], window_seconds=10.0)
    segments = list(segments)
    want = [spoken(a, b) for a, b in info.windows]
    assert [s.text for s in segments] == [f"from {a:.0f} to {b:.0f}" for a, b in info.windows]
    assert [(s.start, s.end) for s in segments] == [(a, round(b, 3)) for a, b in info.windows]
    assert info.finish_reasons == ["stop"] * len(want)
    # every forced token is evaluated, the last one too: its logits decide the stop
    assert steps["n"] == sum(len(model.engine.tokenize(t)) for t in want)


def test_live_readouts_decode_the_forced_text_and_verify_it_as_drafts(tiny_bundles, speech):
    model = MossAudio(tiny_bundles["k2"], threads=1)
    heard = []

    def text_so_far(start_s: float, end_s: float) -> str:
        heard.append(end_s)
        return "[0.00]hello[1.00]"

    model.forced_output = text_so_far
    session = model.stream_session()
    audio = np.concatenate([np.zeros(8000, np.float32), speech[: 12 * 16000], np.zeros(16000, np.float32)])
    events = list(model.stream([audio[i:i + 4000] for i in range(0, len(audio), 4000)], session=session))
    finals = [e.text for e in events if e.type == "final"]
    assert finals and set(finals) == {"hello"}
    assert heard == sorted(heard)  # readouts asked about more and more audio
    stats = session.readout_stats
    assert stats["readouts"] > 2 and stats["accepted_tokens"] > 0  # later readouts accepted the earlier ones
