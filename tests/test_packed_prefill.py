"""Packed prefill (docs/format.md#packed-prefill): a prompt's text and time markers go to
llama.cpp as their token embedding rows, in the same batches as the audio rows. The rows are
exactly what llama.cpp looks up for the tokens, and the packed prompt gives the per-piece
prompt's tokens."""
from __future__ import annotations

import shutil
from pathlib import Path

import gguf
import llama_cpp as C
import numpy as np
import pytest
import soundfile as sf

from edge_runtime.bundle import load_bundle
from edge_runtime.gguf_file import GGUFFormatError, read_tensor_directory
from edge_runtime.llm import N_BATCH, TOKEN_EMBEDDING, LlamaModel, TokenEmbedding, even_batches
from edge_runtime.prompt import SENTENCE_TIMESTAMPS, Audio, build_prompt
from edge_runtime.transcribe import MossAudio

from cli_helpers import assert_one_line_error, moss_edge


def nano_gguf() -> Path:
    return load_bundle("nano").llm_path


@pytest.fixture(params=["tiny F32", "nano Q5_1"])
def gguf_path(request, tiny_bundles) -> Path:
    return load_bundle(tiny_bundles["k2"]).llm_path if request.param == "tiny F32" else nano_gguf()


def test_the_tensor_directory_is_gguf_py_readers():
    path = nano_gguf()
    directory = read_tensor_directory(path)
    reader = gguf.GGUFReader(path)
    assert directory.keys() == {t.name for t in reader.tensors}
    for t in reader.tensors:
        got = directory[t.name]
        assert (got.ggml_type, got.shape, got.offset) == (int(t.tensor_type), tuple(int(n) for n in t.shape),
                                                           t.data_offset)


def test_token_rows_evaluated_as_embeddings_give_the_token_batch_bit_for_bit(gguf_path):
    model = LlamaModel(gguf_path, n_ctx=256, threads=1)
    prefix = model.tokenize("<|im_start|>user\nhello")
    for token in (15, 16, 151669, *model.tokenize(" there[2.01]")):
        model.clear()
        model.eval_tokens(prefix, 0)
        as_token = model.eval_tokens([token], len(prefix))
        model.clear()
        model.eval_tokens(prefix, 0)
        as_row = model.eval_embeddings(model.token_rows([token]), len(prefix))
        assert np.array_equal(as_token, as_row), token
    rows = model.token_rows([15, 16])
    assert not rows[:, model.n_embd:].any()  # no DeepStack slices: a token batch adds none


def test_packed_prompt_gives_the_per_piece_prompts_tokens_and_logits(tiny_bundles, speech, monkeypatch):
    model = MossAudio(tiny_bundles["k2"], threads=1, n_ctx=1024)
    clip = speech[: 9 * 16000]
    rows = model.engine.encode(clip)
    pieces = build_prompt(model.manifest, model.engine.tokenize, len(rows), SENTENCE_TIMESTAMPS)
    assert sum(isinstance(p, Audio) for p in pieces) > 2  # markers split the audio
    packed = model.engine.start(pieces, rows).logits().copy()
    packed_text = [s.text for s in model.transcribe(clip, timestamps="sentence", max_tokens=40)[0]]
    monkeypatch.setattr(LlamaModel, "token_rows", lambda self, tokens: None)
    per_piece = model.engine.start(pieces, rows).logits().copy()
    per_piece_text = [s.text for s in model.transcribe(clip, timestamps="sentence", max_tokens=40)[0]]
    assert packed_text == per_piece_text
    assert np.argmax(packed) == np.argmax(per_piece)
    np.testing.assert_allclose(packed, per_piece, rtol=1e-4, atol=1e-4 * np.abs(per_piece).max())


@pytest.mark.parametrize("n, limit", [(516, 256), (512, 256), (257, 256), (5, 256), (0, 256), (1000, 7)])
def test_batches_are_the_fewest_and_even(n, limit):
    batches = even_batches(n, limit)
    assert [lo for lo, _ in batches[1:]] == [hi for _, hi in batches[:-1]]  # back to back
    assert (batches[0][0], batches[-1][1]) == (0, n) if n else batches == []
    sizes = [hi - lo for lo, hi in batches]
    assert len(sizes) == -(-n // limit) and max(sizes, default=0) <= limit
    assert max(sizes, default=0) - min(sizes, default=0) <= 1


def test_a_prompt_longer_than_a_batch_gives_the_one_batch_logits(tiny_bundles):
    path = load_bundle(tiny_bundles["k2"]).llm_path
    one = LlamaModel(path, n_ctx=512, n_batch=512, threads=1)
    split = LlamaModel(path, n_ctx=512, n_batch=40, threads=1)
    assert C.llama_n_ubatch(split.ctx) == 40  # llama.cpp's micro-batch, and so its compute buffer
    rows = one.token_rows(one.tokenize("a prompt of some length, " * 20))
    assert len(rows) > 2 * 40 and len(rows) % 40
    got, want = split.eval_embeddings(rows, 0), one.eval_embeddings(rows, 0)
    # Kernels differ with batch size (here 1e-3 of the largest logit); one row left out or
    # repeated moves the logits 2e-2 of it
    assert np.argmax(got) == np.argmax(want)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-3 * np.abs(want).max())
    assert C.llama_n_ubatch(LlamaModel(path, n_ctx=256, threads=1).ctx) == N_BATCH


def test_the_batch_size_reaches_llama_cpp_from_the_api_and_the_cli(tmp_path):
    model = MossAudio("nano", threads=1, n_batch=16)
    samples = np.random.default_rng(0).standard_normal(3 * 16000).astype(np.float32) * 0.05
    model.generate(samples, SENTENCE_TIMESTAMPS, max_tokens=2)  # the context is made for a call
    assert C.llama_n_ubatch(model.engine._llm.ctx) == 16
    wav = tmp_path / "noise.wav"
    sf.write(wav, samples, 16000)
    assert_one_line_error(moss_edge("transcribe", "nano", str(wav), "--batch-size", "0"), ["batch size 0"])


def test_an_embedding_cut_short_is_refused_by_name(tmp_path):
    source = nano_gguf()
    info = read_tensor_directory(source)[TOKEN_EMBEDDING]
    cut = tmp_path / "llm.gguf"
    with source.open("rb") as f:
        cut.write_bytes(f.read(info.offset + 1000))
    with pytest.raises(GGUFFormatError, match="truncated"):
        TokenEmbedding(cut, n_vocab=info.shape[1], n_embd=info.shape[0])
    shutil.copyfile(source, cut)
    cut.write_bytes(cut.read_bytes()[:200])
    with pytest.raises(GGUFFormatError, match="truncated"):
        read_tensor_directory(cut)
