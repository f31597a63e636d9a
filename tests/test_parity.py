"""The exported bundle, run by the runtime, against the PyTorch reference of the whole model.

Every check runs on both tiny shapes, on ~21 s of espeak-ng speech (6 encoder chunks, time
markers up to two digits). Negative controls show the same checks fail when DeepStack, a
time marker or the positions are wrong.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

import edge_runtime.llm as runtime_llm
from edge_runtime.features import log_mel_spectrogram
from edge_runtime.prompt import TRANSCRIBE, build_prompt, flat_ids
from edge_runtime.transcribe import MossAudio
from moss_audio_edge.export.bundle_export import export_bundle
from moss_audio_edge.export.checkpoint import Checkpoint
from moss_audio_edge.export.reference import MossAudioReference, prompt_ids

ROWS_TOLERANCE = 1e-4
LOGITS_TOLERANCE = 1e-2
EXACT_LOGITS_TOLERANCE = 1e-3  # f32 GGUF, f32 KV cache, no flash attention (seen: 5e-7, 1.3e-4)
GREEDY_TOKENS = 48


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


class Case:
    """One tiny model: the reference, the runtime on its bundle, and the shared inputs."""

    def __init__(self, checkpoint_dir: Path, bundle_dir: Path, speech: np.ndarray):
        checkpoint = Checkpoint(checkpoint_dir)
        self.reference = MossAudioReference.from_checkpoint(checkpoint)
        # f32 KV cache and no flash attention (which rounds through f16 on CPU): exact
        # arithmetic, so any mapping mistake stands out; the defaults are checked below
        self.runtime = MossAudio(bundle_dir, threads=2, n_ctx=1024, kv_type="f32", flash_attention="off")
        self.mel = log_mel_spectrogram(speech)
        self.rows = self.runtime.engine.encoder.encode(self.mel)
        with torch.no_grad():
            self.reference_rows = self.reference.encode_audio(torch.from_numpy(self.mel))
        tokenizer = AutoTokenizer.from_pretrained(str(checkpoint_dir))
        self.encode_text = lambda text: tokenizer.encode(text, add_special_tokens=False)
        p = checkpoint.config.processor
        self.audio_ids = (p.audio_token_id, p.audio_start_id, p.audio_end_id)
        self.reference_ids = prompt_ids(len(self.rows), self.encode_text, TRANSCRIBE, self.audio_ids)
        self.reference_logits = self.reference.last_logits(
            torch.tensor(self.reference_ids), self.reference_rows).numpy()

    def pieces(self):
        return build_prompt(self.runtime.manifest, self.runtime.engine.tokenize, len(self.rows), TRANSCRIBE)

    def runtime_start(self, rows: np.ndarray | None = None, pieces=None):
        return self.runtime.engine.start(pieces or self.pieces(), self.rows if rows is None else rows)

    def runtime_logits(self, rows: np.ndarray | None = None, pieces=None) -> np.ndarray:
        return self.runtime_start(rows, pieces).logits()


@pytest.fixture(scope="module")
def case(tiny_name: str, tiny_checkpoints, tiny_bundles, speech) -> Case:
    return Case(tiny_checkpoints[tiny_name], tiny_bundles[tiny_name], speech)


def test_clip_spans_several_chunks_and_two_digit_markers(case: Case):
    assert case.mel.shape[1] > 5 * 400
    digits = case.runtime.manifest.tokens.digits
    assert [digits[2], digits[0]] == case.encode_text("20")  # the 20 s marker is two tokens
    ids = case.reference_ids
    assert any(ids[i:i + 2] == [digits[2], digits[0]] for i in range(len(ids)))


def test_onnx_rows_match_reference(case: Case):
    assert case.rows.shape == tuple(case.reference_rows.shape)
    assert case.rows.shape[1] == case.runtime.manifest.model.row_width
    assert rel_error(case.rows, case.reference_rows.numpy()) <= ROWS_TOLERANCE


def test_prompt_ids_match_reference(case: Case):
    assert flat_ids(case.pieces(), case.audio_ids[0]) == case.reference_ids


def test_last_token_logits_match_reference(case: Case):
    error = rel_error(case.runtime_logits(), case.reference_logits)
    print(f"last-token logits relative error {error:.2e}")
    assert error <= EXACT_LOGITS_TOLERANCE


def test_default_settings_and_f16_gguf_stay_within_tolerance(case: Case, tiny_name, tiny_checkpoints,
                                                              tmp_path_factory):
    """What users run: f16 KV cache and flash attention on auto, with the F32 and an F16 GGUF."""
    f16_bundle = export_bundle(tiny_checkpoints[tiny_name], tmp_path_factory.mktemp("f16") / "b",
                               llm_type="F16", log=lambda _: None)
    for bundle in (case.runtime.bundle.directory, f16_bundle):
        model = MossAudio(bundle, threads=2, n_ctx=1024)
        error = rel_error(model.engine.start(case.pieces(), case.rows).logits(), case.reference_logits)
        print(f"{model.manifest.llm.dtype} GGUF, default settings: logits relative error {error:.2e}")
        assert error <= LOGITS_TOLERANCE


def test_greedy_tokens_identical_with_meaningful_margins(case: Case):
    stop = case.runtime.manifest.tokens.stop
    want, margins = case.reference.greedy(torch.tensor(case.reference_ids), case.reference_rows,
                                          GREEDY_TOKENS, stop)
    got = list(case.runtime_start().decode(GREEDY_TOKENS, stop))
    logit_error = np.abs(case.runtime_logits() - case.reference_logits).max()
    print(f"greedy: {len(want)} tokens, {len(set(want))} distinct; top-1/top-2 margins "
          f"min {min(margins):.4f} median {np.median(margins):.4f}; max |logit error| {logit_error:.2e}")
    assert len(want) == GREEDY_TOKENS and len(set(want)) >= 8
    assert got == want
    # identical tokens mean something only if every step's margin dwarfs the numeric error
    assert min(margins) > 10 * logit_error


# --- negative controls: the same comparisons must fail when a stage is wrong --------------

def test_dropping_deepstack_rows_breaks_parity(case: Case):
    hidden = case.runtime.manifest.model.hidden_size
    rows = case.rows.copy()
    rows[:, hidden:] = 0.0
    assert rel_error(case.runtime_logits(rows=rows), case.reference_logits) > LOGITS_TOLERANCE


def test_misplaced_time_marker_breaks_parity(case: Case):
    manifest = case.runtime.manifest
    shifted = dataclasses.replace(manifest.time_markers, every_tokens=manifest.time_markers.every_tokens - 1)
    wrong_manifest = dataclasses.replace(manifest, time_markers=shifted)
    pieces = build_prompt(wrong_manifest, case.runtime.engine.tokenize, len(case.rows), TRANSCRIBE)
    assert flat_ids(pieces, case.audio_ids[0]) != case.reference_ids
    assert rel_error(case.runtime_logits(pieces=pieces), case.reference_logits) > LOGITS_TOLERANCE


@pytest.mark.parametrize("layout", ["section0_only", "token_major"])
def test_wrong_mrope_positions_break_parity(case: Case, monkeypatch, layout: str):
    right = runtime_llm.mrope_positions

    def wrong(start: int, n: int) -> np.ndarray:
        pos = right(start, n)
        if layout == "section0_only":  # what a NULL pos / llama_batch_init batch gives
            pos[n:] = 0
            return pos
        return pos.reshape(4, n).T.reshape(-1).copy()  # interleaved instead of section-major

    monkeypatch.setattr(runtime_llm, "mrope_positions", wrong)
    try:
        logits = case.runtime_logits()
    except RuntimeError as exc:  # llama.cpp refused the batch: parity fails loudly too
        assert "llama_decode failed" in str(exc)
        return
    assert rel_error(logits, case.reference_logits) > LOGITS_TOLERANCE
