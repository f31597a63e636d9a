"""Live streaming: exact incremental inference, voice activity, capture sources.

The streaming claims are checked against independent offline computations: the final text
of every window equals greedy decoding of that window's audio from scratch, token for token.
"""
from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.audio import resample
from edge_runtime.capture import StreamResampler, array_blocks
from edge_runtime.features import LogMelStream, log_mel_spectrogram
from edge_runtime.llm import OUTPUT_ROWS
from edge_runtime.prompt import SENTENCE_TIMESTAMPS, TRANSCRIBE
from edge_runtime.transcribe import MossAudio
from edge_runtime.vad import VoiceActivity

from stream_helpers import offline_tokens, run_session, running_max_mel

SR = 16000
BUDGET = 24


@pytest.fixture(scope="module")
def model(tiny_bundles) -> MossAudio:
    # exact arithmetic (f32 KV, no flash attention): batch shapes then cannot flip a greedy choice
    return MossAudio(tiny_bundles["k2"], threads=2, n_ctx=2048, kv_type="f32", flash_attention="off")


@pytest.fixture(scope="module")
def stream_audio(speech) -> np.ndarray:
    """Silence, speech, silence, the same speech again, silence: two utterances."""
    gap = np.zeros(int(1.5 * SR), dtype=np.float32)
    return np.concatenate([gap, speech, gap, speech[: 9 * SR], gap])


# --- front end -----------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_stream_resampler_equals_offline_resampler(rate: int):
    x = np.random.default_rng(rate).standard_normal(rate * 2 + 123).astype(np.float32)
    resampler = StreamResampler(rate)
    pieces = [resampler.process(x[lo:lo + 777]) for lo in range(0, len(x), 777)] + [resampler.flush()]
    streamed = np.concatenate(pieces)
    offline = resample(x, rate, SR)
    assert streamed.shape == offline.shape
    assert np.abs(streamed - offline).max() < 1e-5


def test_log_mel_stream_frames_equal_offline_with_running_max(speech):
    # speech 20 dB quieter for the first 5 s: the running maximum grows in the second chunk
    audio = np.concatenate([np.zeros(SR, np.float32), 0.1 * speech[: 4 * SR], speech[4 * SR: 10 * SR]])
    stream = LogMelStream()
    chunks = []
    for lo in range(0, len(audio), 2999):
        stream.append(audio[lo:lo + 2999])
        while stream.ready_frames() >= 400:
            chunks.append(stream.take(400))
    chunks.append(stream.finish())
    live = np.concatenate(chunks, axis=1)
    assert live.shape == log_mel_spectrogram(audio).shape
    assert np.array_equal(live, running_max_mel(audio))
    # the running maximum really differs from the global one on this clip: the first chunk
    # is clamped at a lower floor than offline, the last at the same
    assert not np.array_equal(live[:, :400], log_mel_spectrogram(audio)[:, :400])
    assert np.array_equal(live[:, 800:], log_mel_spectrogram(audio)[:, 800:])


# --- voice activity ---------------------------------------------------------------------------

def test_vad_finds_utterances_and_ignores_silence_and_faint_noise(speech):
    noise = (np.random.default_rng(0).standard_normal(2 * SR) * 1e-3).astype(np.float32)  # -60 dBFS
    audio = np.concatenate([noise, speech, noise, np.zeros(SR, np.float32)])
    vad = VoiceActivity()
    events = [e for lo in range(0, len(audio), 1000) for e in vad.feed(audio[lo:lo + 1000])]
    starts = [e.sample / SR for e in events if e.kind == "start"]
    ends = [e.sample / SR for e in events if e.kind == "end"]
    assert starts and abs(starts[0] - 2.0) < 0.15  # speech begins after 2 s of noise
    assert ends and ends[-1] <= 2.0 + len(speech) / SR + 0.1
    assert all(s >= 1.9 for s in starts)


def test_silence_costs_no_llm_work(model):
    session, events = run_session(model, np.zeros(6 * SR, np.float32), timestamps="none")
    assert events == [] and session.readout_stats["readouts"] == 0 and session.closed_windows == []


# --- exact incremental inference ---------------------------------------------------------------

@pytest.fixture(scope="module")
def streamed(model, stream_audio):
    return run_session(model, stream_audio, timestamps="none", partial_tokens=BUDGET, final_tokens=BUDGET)


def test_final_text_equals_offline_text_of_each_window(model, stream_audio, streamed):
    session, events = streamed
    assert len(session.closed_windows) >= 2
    assert any(end - start > 8 * SR for start, end, _ in session.closed_windows)  # several chunks
    for start, end, tokens in session.closed_windows:
        assert len(tokens) == BUDGET
        assert tokens == offline_tokens(model, stream_audio[start:end], TRANSCRIBE, BUDGET)
    finals = [e for _, e in events if e.type == "final"]
    assert [e.text for e in finals] == [model.engine.detokenize(t).strip() for _, _, t in session.closed_windows]


def test_partials_arrive_before_the_utterance_ends(streamed, speech):
    _, events = streamed
    speech_end = int(1.5 * SR) + len(speech)
    first_partial_clock = next(clock for clock, e in events if e.type == "partial")
    assert first_partial_clock < speech_end - 5 * SR


def test_event_times_lie_inside_the_audio_and_are_monotonic(streamed, stream_audio):
    _, events = streamed
    duration = len(stream_audio) / SR
    timed = [e for _, e in events if e.type in ("partial", "final")]
    assert timed
    assert all(0 <= e.start <= e.end <= duration for e in timed)
    finals = [e for e in timed if e.type == "final"]
    assert all(a.end <= b.start for a, b in zip(finals, finals[1:]))


def test_draft_verification_gives_plain_greedy_results(model, stream_audio, streamed):
    with_drafts, _ = streamed
    plain, _ = run_session(model, stream_audio, timestamps="none", partial_tokens=BUDGET,
                           final_tokens=BUDGET, use_drafts=False)
    assert [w[2] for w in plain.closed_windows] == [w[2] for w in with_drafts.closed_windows]
    assert with_drafts.readout_stats["draft_tokens"] > 0
    assert plain.readout_stats["draft_tokens"] == 0


def test_window_rolls_over_at_the_length_limit(model, speech):
    audio = np.concatenate([np.zeros(SR // 2, np.float32), speech, np.zeros(SR, np.float32)])
    session, events = run_session(model, audio, timestamps="sentence", max_window_s=8.0,
                                  partial_tokens=8, final_tokens=BUDGET)
    windows = session.closed_windows
    assert len(windows) >= 3
    assert all(b[0] == a[1] for a, b in zip(windows, windows[1:]))  # contiguous: nothing lost
    for start, end, tokens in windows[:-1]:  # rolled over: the audio went on past `end`
        assert tokens == offline_tokens(model, audio[start:], SENTENCE_TIMESTAMPS, BUDGET, (end - start) // 160)
    start, end, tokens = windows[-1]  # closed by the end of speech
    assert tokens == offline_tokens(model, audio[start:end], SENTENCE_TIMESTAMPS, BUDGET)
    finals = [e for _, e in events if e.type == "final"]
    assert len(finals) == len(windows)
    assert all(a.end <= b.start + 1e-6 for a, b in zip(finals, finals[1:]))


def test_all_logits_equal_one_token_at_a_time(model):
    ids = model.engine.tokenize("Hello there, how are you today? 12345 " * 6)  # several OUTPUT_ROWS batches
    assert len(ids) > 2 * OUTPUT_ROWS
    batch = model.engine.start().eval_tokens(ids, logits_from=0)
    sequence = model.engine.start()
    single = []
    for token in ids:
        sequence.eval_tokens([token])
        single.append(sequence.logits())
    assert batch.shape == (len(ids), model.engine.n_vocab)
    assert np.abs(batch - np.stack(single)).max() <= 1e-3 * np.abs(batch).max()
    assert (batch.argmax(1) == np.stack(single).argmax(1)).all()


def test_model_stream_accepts_numpy_blocks_at_another_rate(model, speech):
    audio_48k = resample(np.concatenate([np.zeros(SR // 2, np.float32), speech[: 6 * SR]]), SR, 48000)
    blocks = (audio_48k[lo:lo + 4800] for lo in range(0, len(audio_48k), 4800))
    events = list(model.stream(blocks, timestamps="none", sample_rate=48000, final_tokens=8, partial_tokens=8))
    kinds = [e.type for e in events]
    assert "partial" in kinds and kinds.count("final") >= 1
    assert list(array_blocks([])) == []


def test_dropped_input_and_lag_become_status_events(model):
    import time as clock

    from edge_runtime.capture import Block
    from edge_runtime.stream import stream_events

    now = clock.monotonic()
    blocks = [Block(np.zeros(1600, np.float32), now, dropped_samples=3200),
              Block(np.zeros(1600, np.float32), now - 5.0, xrun=True)]
    events = [e.to_dict() for e in stream_events(blocks, model.stream_session(timestamps="none"))]
    assert {"type": "status", "dropped_s": 0.2, "xrun": False} in events
    assert any(e.get("xrun") for e in events)
    assert any(e.get("readouts") == "skipped" and e["lag_s"] >= 5.0 for e in events)
