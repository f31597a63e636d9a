"""The embedded nano model: a trained MOSS-Audio small enough to ship, so the tests can check
what random weights cannot show: the right words, right times, streaming that loses nothing,
and what quantization costs in words."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import speech
from edge_runtime.bundle import EMBEDDED_BUNDLES, bundle_path, load_bundle
from edge_runtime.cli.demo import DEMO_SENTENCES
from edge_runtime.encoder import split_chunks
from edge_runtime.features import log_mel_spectrogram
from edge_runtime.prompt import SENTENCE_TIMESTAMPS
from edge_runtime.timestamps import Segment
from edge_runtime.transcribe import MossAudio
from moss_audio_edge.export.checkpoint import Checkpoint
from moss_audio_edge.export.nano import corpus
from moss_audio_edge.export.nano.quality import boundary_errors, evaluate, inside_and_ordered, match_sentences
from moss_audio_edge.export.nano.release import SHIPPED_RECIPE, build_float_bundle
from moss_audio_edge.export.nano.train import NANO_CONFIG
from moss_audio_edge.export.nano.weights import WEIGHTS_FILE
from moss_audio_edge.export.checkpoint_writer import PUBLISHED_4B_CONFIG
from moss_audio_edge.quantize.bundle_quant import quantize_bundle

from cli_helpers import moss_edge
from stream_helpers import offline_choice_gaps, run_session

SR = 16000
TEST_SEED = 7  # not the benchmark's seed: these clips are new to every figure in the README
TEST_CLIPS = 12
MAX_BUNDLE_BYTES = 25_000_000
EMBEDDED_NAME = "embedded `nano` bundle"
# Sampling noise between the benchmark's 80 clips (the model card) and these 12: a test
# figure further than this from the card means the shipped bundle is not the one measured.
WER_SLACK = 0.12
MAE_SLACK_MS = 120.0
FLOAT_TIE = 0.01  # logits: far below what a wrong time marker, position or DeepStack row moves
# What the shipped quantization (int8 encoder, Q8_0 LLM, Q5_1 embedding) may cost in words
# against the float bundle on the same clips.
MAX_WER_INCREASE = 0.05


def card_figures(clips: str = "clean") -> dict:
    rows = load_bundle("nano").manifest.model_card["quality"]["rows"]
    return next(r for r in rows if r["bundle"] == EMBEDDED_NAME and r["set"] == clips)


@pytest.fixture(scope="module")
def shipped() -> MossAudio:
    return MossAudio("nano", threads=2)


@pytest.fixture(scope="module")
def clips() -> list[corpus.Clip]:
    return corpus.held_out_clips(TEST_CLIPS, TEST_SEED)


@pytest.fixture(scope="module")
def float_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_float_bundle(tmp_path_factory.mktemp("nano-release"))


def test_embedded_bundle_is_small_and_carries_its_model_card():
    directory = bundle_path("nano")
    assert directory == EMBEDDED_BUNDLES["nano"]
    bundle = load_bundle("nano", verify_hashes=True)
    m = bundle.manifest
    size = sum(p.stat().st_size for p in directory.iterdir())
    assert size <= MAX_BUNDLE_BYTES
    assert (m.encoder.dtype, m.llm.dtype) == ("int8", "Q8_0")
    card = m.model_card
    assert card["name"] == "MOSS-Audio nano" and card["limitations"]
    assert set(card["held_out"]["voice_variants"]) == set(corpus.split_variants().held_out_variants)
    figures = card_figures()
    assert 0 <= figures["wer"] and figures["timestamp_mae_ms"] > 0 and figures["size_mb"] * 1e6 <= MAX_BUNDLE_BYTES


def test_checkpoint_is_the_published_layout_only_smaller(float_bundle: Path):
    checkpoint = Checkpoint(float_bundle.parent / "checkpoint")  # validated against docs/format.md#checkpoint on read
    cfg = checkpoint.config
    assert cfg.language.vocab_size == PUBLISHED_4B_CONFIG["vocab_size"] == 151936
    written = json.loads((float_bundle.parent / "checkpoint" / "config.json").read_text())
    assert set(written) == set(PUBLISHED_4B_CONFIG) and written["tie_word_embeddings"] is True
    assert load_bundle(float_bundle).manifest.tokens == load_bundle("nano").manifest.tokens
    assert NANO_CONFIG["language_config"]["vocab_size"] == 151936


def test_embedded_bundle_is_the_release_of_the_shipped_weights(float_bundle: Path, tmp_path: Path):
    """Nothing hand-made: export + quantize of the weights in the repository give the shipped files."""
    assert WEIGHTS_FILE.stat().st_size < 10_000_000
    rebuilt = load_bundle(quantize_bundle(float_bundle, tmp_path / "rebuilt", threads=2, log=lambda _: None,
                                          **SHIPPED_RECIPE)).manifest
    shipped = load_bundle("nano").manifest
    assert (rebuilt.encoder.sha256, rebuilt.llm.sha256) == (shipped.encoder.sha256, shipped.llm.sha256)


def test_held_out_speech_scores_what_the_model_card_says(shipped: MossAudio, clips):
    quality = evaluate(EMBEDDED_BUNDLES["nano"], clips, threads=2)
    card = card_figures()
    print(quality, card)
    assert quality["wer"] <= card["wer"] + WER_SLACK
    assert quality["timestamp_mae_ms"] <= card["timestamp_mae_ms"] + MAE_SLACK_MS
    assert quality["sentences_matched"] >= card["sentences_matched"] - 0.15
    assert quality["clips_times_inside_and_ordered"] == 1.0


def test_transcribe_api_gives_ordered_segments_inside_the_audio(shipped: MossAudio, clips):
    clip = max(clips, key=lambda c: len(c.audio))
    assert len(clip.audio) > 8 * SR  # several encoder chunks and time markers
    segments = list(shipped.transcribe(clip.audio, timestamps="sentence")[0])
    duration = len(clip.audio) / SR
    assert segments and inside_and_ordered(segments, duration)
    assert len(match_sentences(clip.sentences, segments)) >= len(clip.sentences) - 1


def test_shipped_quantization_costs_at_most_the_stated_words(float_bundle: Path, clips):
    baseline = evaluate(float_bundle, clips, threads=2)["wer"]
    shipped = evaluate(EMBEDDED_BUNDLES["nano"], clips, threads=2)["wer"]
    print(f"shipped WER {shipped:.3f} vs float {baseline:.3f}")
    assert shipped - baseline <= MAX_WER_INCREASE


@pytest.fixture(scope="module")
def spoken_run() -> corpus.Clip:
    """Five commands with short pauses (below the VAD's 0.6 s): one utterance of several chunks."""
    voice = corpus.Voice("en-gb", corpus.split_variants().held_out_variants[1], corpus.HELD_OUT_SPEEDS[0], 40)
    texts = ["dial four two seven one", "turn on the kitchen lights", "set a timer for ten minutes",
             "call my sister", "open the garage door"]
    utterances = [corpus.Utterance(t, voice, corpus.to_int16(corpus.synthesize(t, voice))) for t in texts]
    starts, t = [], 1.0
    for u in utterances:
        starts.append(t)
        t += len(u.audio) / SR + 0.3
    return speech.place(utterances, starts, tail_s=1.5)


def test_a_chunks_rows_do_not_depend_on_the_chunks_encoded_with_it(shipped: MossAudio, clips):
    """The shipped int8 encoder quantizes activations with one scale per ONNX run: were
    chunks batched, a streamed chunk (encoded alone) would get other rows than offline."""
    clip = max(clips, key=lambda c: len(c.audio))
    batch, lengths = split_chunks(log_mel_spectrogram(clip.audio), shipped.engine.encoder.audio.chunk_frames)
    assert len(batch) >= 3
    together = shipped.engine.encoder.encode_chunks(batch, lengths)
    alone = [shipped.engine.encoder.encode_chunks(batch[i:i + 1], lengths[i:i + 1])[0] for i in range(len(batch))]
    assert all(np.array_equal(a, b) for a, b in zip(together, alone))


def test_streaming_final_text_equals_offline_text_on_multi_chunk_speech(spoken_run: corpus.Clip):
    model = MossAudio("nano", threads=2, n_ctx=2048, kv_type="f32", flash_attention="off")
    session, events = run_session(model, spoken_run.audio, timestamps="sentence")
    assert any(end - start > 8 * SR for start, end, _ in session.closed_windows)
    for start, end, tokens in session.closed_windows:
        # Streaming appends the audio chunk by chunk, offline evaluates it in one batch: the same
        # sums in another order. A trained model meets near-ties (two timestamp digits within
        # 0.001 logits) that this rounding decides, so every streamed token, and the stop that
        # closed the window, must be the offline greedy choice or tied with it within FLOAT_TIE.
        # (The exact token-for-token equality is tested on random models in test_stream.py.)
        gaps = offline_choice_gaps(model, spoken_run.audio[start:end], SENTENCE_TIMESTAMPS, tokens)
        assert gaps.max() <= FLOAT_TIE, (gaps.max(), int(gaps.argmax()))
        assert (gaps == 0).mean() >= 0.9  # ties are the exception
    finals = [e for _, e in events if e.type == "final"]
    said = corpus.words(" ".join(e.text for e in finals))
    truth = corpus.words(" ".join(s.text for s in spoken_run.sentences))
    # one clip of 23 words varies more than the 12-clip set: the demo clip's bound
    assert corpus.word_errors(truth, said) / len(truth) <= card_figures()["wer"] + 2 * WER_SLACK
    duration = len(spoken_run.audio) / SR
    assert all(0 <= e.start <= e.end <= duration for e in finals)
    assert all(a.end <= b.start + 1e-6 for a, b in zip(finals, finals[1:]))


def test_word_error_rate_and_timestamp_matching():
    assert corpus.word_errors("a b c d".split(), "a x c".split()) == 2
    assert corpus.words("Call my sister. Dial, four!") == ["call", "my", "sister", "dial", "four"]
    audio = np.zeros(SR, dtype=np.float32)
    audio[4000:8000] = 0.5
    trimmed = speech.trim_silence(audio)
    assert len(trimmed) == 4000


def test_readme_demo_prints_a_timestamped_transcript(tmp_path: Path):
    result = moss_edge("demo", "--cache-dir", str(tmp_path), "--threads", "2")
    assert result.returncode == 0, result.stderr
    rows = re.findall(r"\[\s*([\d.]+) ->\s*([\d.]+)\] (.+?)\s+\| true \[\s*([\d.]+) ->\s*([\d.]+)\] (.+)",
                      result.stdout)
    assert {r[5].strip() for r in rows} >= set(DEMO_SENTENCES) - {DEMO_SENTENCES[-1]}, result.stdout  # placed
    heard = corpus.words(" ".join(r[2] for r in rows))
    truth = corpus.words(" ".join(DEMO_SENTENCES))
    # one short clip: twice the slack of the 12-clip test above
    assert corpus.word_errors(truth, heard) / len(truth) <= card_figures()["wer"] + 2 * WER_SLACK, result.stdout
    # timestamp error as the model card measures it; one clip is held to the card's worst clip
    predicted = [Segment(float(a), float(b), text) for a, b, text in dict.fromkeys(r[:3] for r in rows)]
    truth = [corpus.Sentence(float(a), float(b), text) for a, b, text in dict.fromkeys(r[3:] for r in rows)]
    errors = boundary_errors(truth, predicted)
    assert 1000 * sum(errors) / len(errors) <= card_figures()["timestamp_mae_ms_worst_clip"], result.stdout
