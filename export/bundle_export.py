"""Checkpoint directory -> bundle directory (ONNX audio encoder, GGUF LLM, manifest).

The bundle is assembled in a hidden staging directory beside the target and renamed into
place only when complete, so a failed or interrupted export leaves no bundle behind.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch

from edge_runtime import __version__
from edge_runtime.bundle import (AudioParams, Manifest, ModelInfo, TimeMarkers, TokenIds,
                                 file_entry, write_manifest)
from edge_runtime.staging import staged_bundle_dir

from .checkpoint import Checkpoint, CheckpointError, downsampled_length
from .gguf_llm import export_llm_gguf
from .onnx_encoder import export_audio_encoder
from .reference import AudioRowsModel

ENCODER_FILE = "encoder.onnx"
LLM_FILE = "llm.gguf"
MARKER_EVERY_TOKENS = 25  # 2 s at 12.5 tokens/s
SECONDS_PER_MARKER = 2


def token_ids(checkpoint: Checkpoint) -> TokenIds:
    """Ids the runtime needs, read from the checkpoint's own tokenizer files."""
    directory = checkpoint.directory
    try:
        added = json.loads((directory / "added_tokens.json").read_text(encoding="utf-8"))
        vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{directory}: tokenizer files unreadable ({exc})") from exc
    for name in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        if name not in added:
            raise CheckpointError(f"{directory / 'added_tokens.json'}: no {name}")
    missing_digits = [d for d in "0123456789" if d not in vocab]
    if missing_digits:
        raise CheckpointError(f"{directory / 'vocab.json'}: no digit tokens {missing_digits}")
    p = checkpoint.config.processor
    stop = tuple(dict.fromkeys([checkpoint.config.eos_token_id, added["<|im_end|>"], added["<|endoftext|>"]]))
    return TokenIds(audio=p.audio_token_id, audio_start=p.audio_start_id, audio_end=p.audio_end_id,
                    im_start=added["<|im_start|>"], im_end=added["<|im_end|>"],
                    endoftext=added["<|endoftext|>"], digits=tuple(vocab[d] for d in "0123456789"),
                    stop=stop)


def encoder_parity(model: AudioRowsModel, onnx_path: Path, seed: int = 0) -> dict[str, float]:
    """ONNX vs PyTorch rows on one random full chunk and one partial chunk."""
    frames = model.cfg.audio.chunk_frames
    mel = torch.from_numpy(np.random.default_rng(seed).standard_normal(
        (2, model.cfg.audio.num_mel_bins, frames)).astype(np.float32))
    lengths = torch.tensor([frames, frames // 2 + 3])
    with torch.no_grad():
        expected = model.audio_rows(mel, lengths).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rows, counts = session.run(None, {"mel": mel.numpy(), "lengths": lengths.numpy()})
    valid = [int(c) for c in counts]
    got = np.concatenate([rows[i, :c] for i, c in enumerate(valid)])
    want = np.concatenate([expected[i, :c] for i, c in enumerate(valid)])
    return {"encoder_rows_max_rel_error": float(np.abs(got - want).max() / np.abs(want).max())}


def export_bundle(checkpoint_dir: str | Path, out_dir: str | Path, llm_type: str = "F16",
                  log: Callable[[str], None] = print) -> Path:
    checkpoint = Checkpoint(checkpoint_dir)
    cfg = checkpoint.config
    out = Path(out_dir)
    timings: dict[str, float] = {}
    with staged_bundle_dir(out) as staging:
        started = time.perf_counter()
        log(f"reading the audio encoder and adapters from {checkpoint.directory}")
        audio_side = AudioRowsModel.from_checkpoint(checkpoint)  # the LLM half is streamed
        log("tracing the audio encoder to ONNX")
        encoder_files = export_audio_encoder(audio_side, staging / ENCODER_FILE)
        parity = encoder_parity(audio_side, staging / ENCODER_FILE)
        del audio_side
        timings["encoder_s"] = time.perf_counter() - started
        log(f"writing the {llm_type} GGUF LLM")
        started = time.perf_counter()
        export_llm_gguf(checkpoint, staging / LLM_FILE, llm_type)
        timings["llm_s"] = time.perf_counter() - started
        a, lm = cfg.audio, cfg.language
        manifest = Manifest(
            model=ModelInfo(model_type=cfg.model_type, source_config_sha256=checkpoint.config_sha256,
                            hidden_size=lm.hidden_size, num_deepstack=cfg.num_deepstack,
                            vocab_size=lm.vocab_size, context_length=lm.max_position_embeddings),
            audio=AudioParams(sample_rate=cfg.processor.sample_rate, n_mels=cfg.processor.n_mels,
                              n_fft=cfg.processor.n_fft, hop_length=cfg.processor.hop_length,
                              chunk_frames=a.chunk_frames,
                              tokens_per_chunk=downsampled_length(a.chunk_frames)),
            tokens=token_ids(checkpoint),
            time_markers=TimeMarkers(enabled=cfg.processor.enable_time_marker,
                                     every_tokens=MARKER_EVERY_TOKENS,
                                     seconds_per_marker=SECONDS_PER_MARKER),
            encoder=file_entry(staging, encoder_files[0], "fp32", tuple(encoder_files[1:])),
            llm=file_entry(staging, LLM_FILE, llm_type),
            parity=parity,
            quantization={"encoder": "fp32", "llm": llm_type, "export_timings_s": timings},
            created_by=f"moss-audio-edge {__version__} export",
        )
        write_manifest(staging, manifest)
    log(f"bundle written to {out}")
    return out
