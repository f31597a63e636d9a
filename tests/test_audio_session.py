"""Cached audio: `model.session(audio)` encodes and evaluates the audio once; each question then
costs only its own tokens, and gets what a fresh `ask` gets, token for token — also after other
calls have used the context (the cache is put back from llama.cpp's sequence state)."""
from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.llm import LlamaModel
from edge_runtime.transcribe import MossAudio

QUESTIONS = ["What is said?", "Who is speaking, and how do they sound?", "Summarise it in one word."]


@pytest.fixture(scope="module")
def model(tiny_bundles) -> MossAudio:
    return MossAudio(tiny_bundles["k2"], threads=1)


@pytest.fixture(scope="module")
def clip(speech) -> np.ndarray:
    return speech[: 8 * 16000]


@pytest.fixture
def audio_work(monkeypatch, model):
    """Counts encoder runs and audio rows evaluated by llama.cpp."""
    counts = {"encoder_runs": 0, "audio_rows": 0}
    encode, eval_embeddings = model.engine.encode, LlamaModel.eval_embeddings

    def counting_encode(samples):
        counts["encoder_runs"] += 1
        return encode(samples)

    def counting_rows(self, rows, start, seq=0):
        counts["audio_rows"] += len(rows)
        return eval_embeddings(self, rows, start, seq)

    monkeypatch.setattr(model.engine, "encode", counting_encode)
    monkeypatch.setattr(LlamaModel, "eval_embeddings", counting_rows)
    return counts


def test_each_question_costs_only_its_own_tokens_and_gets_the_fresh_answer(model, clip, audio_work):
    fresh = [model.ask(clip, q, max_tokens=24) for q in QUESTIONS]
    session = model.session(clip)
    audio_work.update(encoder_runs=0, audio_rows=0)
    cached = [session.ask(q, max_tokens=24) for q in QUESTIONS]
    assert audio_work == {"encoder_runs": 0, "audio_rows": 0}
    assert [a.token_ids for a in cached] == [a.token_ids for a in fresh]
    assert [a.prompt_tokens for a in cached] == [a.prompt_tokens for a in fresh]
    assert session.restores == 0
    assert len({tuple(a.token_ids) for a in fresh}) > 1  # the questions matter: not one answer for all


def test_the_cache_is_put_back_after_other_calls_took_the_context(model, clip, speech, audio_work):
    session = model.session(clip)
    first = session.ask(QUESTIONS[0], max_tokens=16)
    segments, _ = model.transcribe(speech[: 5 * 16000], timestamps="none", max_tokens=8)
    list(segments)  # another call took the context
    model.ask(speech[3 * 16000: 9 * 16000], QUESTIONS[1], max_tokens=8)
    audio_work.update(encoder_runs=0, audio_rows=0)
    again = session.ask(QUESTIONS[0], max_tokens=16)
    assert session.restores == 1 and audio_work == {"encoder_runs": 0, "audio_rows": 0}
    assert again.token_ids == first.token_ids == model.ask(clip, QUESTIONS[0], max_tokens=16).token_ids


def test_a_question_that_needs_a_larger_context_gets_it(model, clip):
    session = model.session(clip)
    long = session.ask(QUESTIONS[2], max_tokens=900)  # past the room reserved with the audio
    assert long.token_ids == model.ask(clip, QUESTIONS[2], max_tokens=900).token_ids


def test_no_thinking_and_a_system_prompt_are_kept_as_offline(model, clip):
    session = model.session(clip, system="You are terse.")
    got = session.ask(QUESTIONS[1], max_tokens=12, thinking=False)
    want = model.ask(clip, QUESTIONS[1], max_tokens=12, thinking=False, system="You are terse.")
    assert got.token_ids == want.token_ids
