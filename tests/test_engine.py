"""The engine: the one owner of the llama.cpp context. A later call takes the context and
every earlier user goes stale (a clear error, never tokens from someone else's cache); a
readout leaves the cache as it found it; forced decoding computes every step."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import llm
from edge_runtime.bundle import load_bundle
from edge_runtime.device import CPU
from edge_runtime.engine import Engine
from edge_runtime.errors import ContextTaken, InputError
from edge_runtime.llm import CONTEXT_STEP
from edge_runtime.prompt import SENTENCE_TIMESTAMPS, TRANSCRIBE, build_prompt
from edge_runtime.transcribe import MossAudio


@pytest.fixture(scope="module")
def model(tiny_bundles) -> MossAudio:
    return MossAudio(tiny_bundles["k2"], threads=1, n_ctx=2048)


@pytest.fixture(scope="module")
def clip(speech) -> np.ndarray:
    return speech[: 6 * 16000]


def test_a_half_consumed_answer_stream_refuses_to_go_on_after_another_call(model, clip):
    stream = model.ask_stream(clip, "What is said?", max_tokens=12)
    deltas = iter(stream)
    next(deltas)  # a few tokens decoded on the stream's own cache
    segments, _ = model.transcribe(clip, timestamps="none", max_tokens=4)
    list(segments)
    with pytest.raises(ContextTaken, match="taken the model's context"):
        list(deltas)


def test_an_answer_stream_consumed_in_turn_gives_what_it_gives_alone(model, clip):
    alone = model.ask(clip, "What is said?", max_tokens=12).token_ids
    stream = model.ask_stream(clip, "What is said?", max_tokens=12)
    list(stream)
    list(model.transcribe(clip, timestamps="none", max_tokens=4)[0])
    assert stream.answer.token_ids == alone


def test_interleaved_transcriptions_finish_cleanly_with_their_own_text(model, speech):
    audio = np.concatenate([speech[: 12 * 16000]] * 2)
    alone = [s.text for s in model.transcribe(audio, timestamps="none", window_seconds=10, max_tokens=6)[0]]
    first, _ = model.transcribe(audio, timestamps="none", window_seconds=10, max_tokens=6)
    second, _ = model.transcribe(audio[::-1].copy(), timestamps="none", window_seconds=10, max_tokens=6)
    got = []
    for segment in first:  # each window takes the context afresh: the other call cannot leak in
        got.append(segment.text)
        next(second, None)
    assert got == alone


def test_a_live_session_takes_its_window_back_after_another_call(model, speech):
    """A call between two blocks (a server request) takes the context; the session evaluates
    its open window's prompt again from the encoder rows it kept and goes on."""
    session = model.stream_session(timestamps="none", partial_tokens=4, final_tokens=4)
    audio = np.concatenate([np.zeros(8000, np.float32), speech[: 10 * 16000]])
    session.feed(audio[: 6 * 16000])
    assert session.window is not None  # speech opened a window that holds the cache
    model.generate(audio[:16000], TRANSCRIBE, max_tokens=2)
    events = session.feed(audio[6 * 16000:]) + session.finish()
    assert session.reclaimed == 1
    assert [e for e in events if e.type == "final"]


def test_a_readout_leaves_the_cache_as_it_found_it(model, clip):
    engine = model.engine
    sequence = model.prefill(engine.encode(clip), TRANSCRIBE)
    before, logits = sequence.n_past, sequence.logits()
    tail = engine.tokenize("\nTranscribe the audio.")
    first = sequence.readout(tail, budget=8, stop_ids=())
    assert len(first.tokens) == 8 and first.draft_tokens == 0
    assert sequence.n_past == before
    np.testing.assert_allclose(sequence.logits(), logits, rtol=0, atol=0)
    again = sequence.readout(tail, budget=8, stop_ids=(), draft=first.tokens)
    assert again.tokens == first.tokens and again.accepted_tokens == 8 and again.decoded_tokens == 0
    wrong = sequence.readout(tail, budget=8, stop_ids=(), draft=[first.tokens[0], -1 % engine.n_vocab, 5, 6])
    assert wrong.tokens == first.tokens and wrong.accepted_tokens == 1  # verified, then decoded on
    assert sequence.n_past == before


def test_forced_decoding_feeds_the_given_tokens_and_computes_every_step(model, clip):
    engine = model.engine
    rows = engine.encode(clip)
    want = engine.tokenize("[0.00]turn on the lights[1.50]")
    sequence = model.prefill(rows, TRANSCRIBE)
    start = sequence.n_past
    stop = model.manifest.tokens.stop
    assert list(sequence.decode(100, stop, script=want)) == want  # then the stop: decoding ends
    assert sequence.n_past == start + len(want)
    forced = sequence.logits()
    teacher = model.prefill(rows, TRANSCRIBE).eval_tokens(want, logits_from=0)
    np.testing.assert_allclose(forced, teacher[-1], rtol=0, atol=1e-3 * np.abs(teacher).max())


@pytest.mark.parametrize("settings", [{}, {"kv_type": "f32", "flash_attention": "off"}], ids=["default", "exact"])
def test_sequences_decoded_together_give_what_each_gives_alone(tiny_bundles, speech, settings):
    bundle = load_bundle(tiny_bundles["k1"])
    engine = Engine(bundle, [CPU], gpu_layers=0, threads=1, n_ctx=2048, parallel=3, **settings)
    clips = [speech[i * 16000:(i + 4) * 16000] for i in (0, 5, 11)]  # prompts of different lengths
    prompts = []
    for clip in clips:
        rows = engine.encode(clip)
        prompts.append((build_prompt(bundle.manifest, engine.tokenize, len(rows), TRANSCRIBE), rows))
    stop = bundle.manifest.tokens.stop
    alone = [list(engine.start(pieces, rows).decode(12, stop)) for pieces, rows in prompts]
    group = engine.start_group(3)
    for sequence, (pieces, rows) in zip(group, prompts):
        sequence.prefill(pieces, rows)
    assert engine.decode_together(group, [12, 5, 12], stop) == [alone[0], alone[1][:5], alone[2]]
    assert len({tuple(a) for a in alone}) == 3  # three different outputs: no sequence saw another's cache
    engine.start()
    with pytest.raises(ContextTaken):
        engine.decode_together(group, 4, stop)


def test_an_automatic_context_is_sized_to_each_call_and_changes_no_token(tiny_bundles, clip, speech):
    fixed = MossAudio(tiny_bundles["k2"], threads=1, n_ctx=8192)
    auto = MossAudio(tiny_bundles["k2"], threads=1)  # n_ctx=None: sized to each call
    assert auto.engine.n_ctx == 0  # nothing is reserved before a call needs it

    def transcript(model: MossAudio) -> list:
        segments, _ = model.transcribe(clip, timestamps="sentence", max_tokens=40)
        return list(segments)

    assert transcript(auto) == transcript(fixed)
    positions = auto._window_positions(30.0, SENTENCE_TIMESTAMPS, None, 40)
    assert auto.engine.n_ctx == -(-positions // CONTEXT_STEP) * CONTEXT_STEP < 8192

    # a question over 20 s of audio with a large budget needs more: the context grows for it
    long_clip = speech[: 20 * 16000]
    assert (auto.ask(long_clip, "What is said?", max_tokens=700).token_ids
            == fixed.ask(long_clip, "What is said?", max_tokens=700).token_ids)
    assert auto.engine.n_ctx > positions
    grown = auto.engine.n_ctx
    assert transcript(auto) == transcript(fixed) and auto.engine.n_ctx == grown  # it never shrinks


def test_a_fixed_context_refuses_what_it_cannot_hold(tiny_bundles, clip):
    small = MossAudio(tiny_bundles["k2"], threads=1, n_ctx=256)
    with pytest.raises(InputError, match="context"):
        small.ask(clip, "What is said?", max_tokens=400)


def test_on_the_cpu_the_gguf_is_read_not_mapped(model):
    """Mapped, the file pages of every weight llama.cpp repacks for the CPU would stay resident
    beside the repacked copy (docs/devices.md#memory); without repacked layouts mapping is kept."""
    gguf = os.path.realpath(model.engine.llm_path)
    mapped = [line for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(" " + gguf)]
    assert bool(mapped) == (not llm._cpu_extra_layouts_usable())
