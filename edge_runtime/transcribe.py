"""Offline inference: audio -> log-mel -> encoder rows -> prompt -> llama.cpp -> text."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .audio import load_audio
from .bundle import Bundle, BundleError, load_bundle
from .encoder import AudioEncoder
from .features import log_mel_spectrogram
from .llm import LlamaModel, generate
from .prompt import Audio, Piece, Tokens, build_prompt

GGUF_MODEL_TYPE_KEY = "moss_audio_edge.model_type"


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    audio_tokens: int
    audio_seconds: float
    timings: dict[str, float] = field(default_factory=dict)


def evaluate_prompt(llm: LlamaModel, pieces: list[Piece], rows: np.ndarray) -> None:
    """Feed the pieces in order: token runs as token batches, audio runs as embedding batches."""
    for piece in pieces:
        if isinstance(piece, Tokens):
            llm.eval_tokens(piece.ids)
        else:
            llm.eval_embeddings(rows[piece.start:piece.start + piece.count])


class MossAudio:
    """A loaded bundle: `MossAudio("bundle_dir").generate(audio, instruction)`."""

    def __init__(self, bundle: str | Path | Bundle, threads: int | None = None, n_ctx: int = 8192,
                 gpu_layers: int = 0, kv_type: str = "f16", flash_attention: str = "auto",
                 verify_hashes: bool = False):
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, verify_hashes)
        m = self.bundle.manifest
        self.encoder = AudioEncoder(self.bundle.encoder_path, m.audio, m.model.row_width, threads=threads)
        self.llm = LlamaModel(self.bundle.llm_path, n_ctx=n_ctx, threads=threads, gpu_layers=gpu_layers,
                              kv_type=kv_type, flash_attention=flash_attention)
        if self.llm.n_embd_inp != m.model.row_width:
            raise BundleError(f"{self.bundle.llm_path}: takes rows of {self.llm.n_embd_inp} floats, the "
                              f"manifest's encoder gives {m.model.row_width} (mismatched files)")
        gguf_type = self.llm.metadata(GGUF_MODEL_TYPE_KEY)
        if gguf_type != m.model.model_type:
            raise BundleError(f"{self.bundle.llm_path}: GGUF model type {gguf_type!r} does not match "
                              f"the manifest's {m.model.model_type!r}")

    @property
    def manifest(self):
        return self.bundle.manifest

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """16 kHz mono float32 samples -> encoder rows [N, row_width]."""
        return self.encoder.encode(log_mel_spectrogram(audio))

    def prefill(self, rows: np.ndarray, instruction: str, system: str | None = None) -> int:
        """Reset the context and evaluate the whole prompt; returns its length in tokens."""
        pieces = build_prompt(self.manifest, self.llm.tokenize, len(rows), instruction, system)
        self.llm.reset()
        evaluate_prompt(self.llm, pieces, rows)
        return self.llm.n_past

    def stream_tokens(self, max_new_tokens: int, temperature: float = 0.0, top_k: int = 50,
                      top_p: float = 1.0, seed: int | None = None) -> Iterator[int]:
        return generate(self.llm, max_new_tokens, self.manifest.tokens.stop, temperature, top_k, top_p, seed)

    def generate(self, audio: str | Path | bytes | np.ndarray, instruction: str,
                 sample_rate: int | None = None, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_k: int = 50, top_p: float = 1.0, seed: int | None = None,
                 system: str | None = None, on_token: Callable[[int], None] | None = None) -> Generation:
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        samples = load_audio(audio, sample_rate)
        timings["load_s"] = time.perf_counter() - clock
        clock = time.perf_counter()
        rows = self.encode(samples)
        timings["encode_s"] = time.perf_counter() - clock
        clock = time.perf_counter()
        prompt_tokens = self.prefill(rows, instruction, system)
        timings["prefill_s"] = time.perf_counter() - clock
        clock = time.perf_counter()
        tokens: list[int] = []
        for token in self.stream_tokens(max_new_tokens, temperature, top_k, top_p, seed):
            tokens.append(token)
            if on_token:
                on_token(token)
        timings["decode_s"] = time.perf_counter() - clock
        seconds = len(samples) / self.manifest.audio.sample_rate
        return Generation(text=self.llm.detokenize(tokens), token_ids=tokens, prompt_tokens=prompt_tokens,
                          audio_tokens=len(rows), audio_seconds=seconds, timings=timings)
