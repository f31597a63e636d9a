"""Write a MOSS-Audio checkpoint in the exact published layout: the mirror of checkpoint.py.

Same file set, config fields, tensor names, dtypes and tokenizer ids as the published
checkpoint; the caller supplies the weights (nano training its trained ones, the tests and
benchmarks random ones: tests/fixtures/checkpoints.py).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file

from .checkpoint import expected_tensor_shapes, parse_config
from .tokenizer_writer import write_tokenizer_files

# config.json of MOSS-Audio-4B-Instruct, values as published (docs/format.md#checkpoint).
PUBLISHED_4B_CONFIG: dict[str, Any] = {
    "architectures": ["MossAudioModel"],
    "model_type": "moss_audio",
    "adapter_hidden_size": 8192,
    "deepstack_num_inject_layers": 3,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "tie_word_embeddings": False,
    "vocab_size": 151936,
    "dtype": "bfloat16",
    "audio_config": {
        "d_model": 1280, "output_dim": 1280, "num_mel_bins": 128, "encoder_layers": 32,
        "encoder_attention_heads": 20, "encoder_ffn_dim": 5120, "downsample_rate": 8,
        "downsample_hidden_size": 480, "encoder_attention_window_size": 100, "n_window": 200,
        "max_source_positions": 1500, "activation_function": "gelu", "layer_norm_eps": 1e-5,
        "deepstack_encoder_layer_indexes": [8, 16, 24],
    },
    "language_config": {
        "model_type": "qwen3", "hidden_size": 2560, "intermediate_size": 9728,
        "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 128, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 40960, "vocab_size": 151936, "hidden_act": "silu",
        "attention_bias": False, "use_sliding_window": False, "rope_scaling": None,
    },
}

PUBLISHED_PROCESSOR_CONFIG: dict[str, Any] = {
    "mel_config": {"sr": 16000, "mel_dim": 128, "n_fft": 400, "hop": 160,
                   "use_whisper_feature_extractor": True},
    "enable_time_marker": True,
    "audio_token_id": 151654,
    "audio_start_id": 151669,
    "audio_end_id": 151670,
}

PUBLISHED_GENERATION_CONFIG: dict[str, Any] = {"bos_token_id": 151643, "eos_token_id": 151645}


def config_with(audio: dict[str, Any] | None = None, language: dict[str, Any] | None = None,
                **root: Any) -> dict[str, Any]:
    """The published 4B config with some fields replaced (tiny test models, 8B, MOSS-Music)."""
    config = copy.deepcopy(PUBLISHED_4B_CONFIG)
    config["audio_config"].update(audio or {})
    config["language_config"].update(language or {})
    config.update(root)
    return config


def write_checkpoint(out_dir: str | Path, config: dict[str, Any],
                     tensor: Callable[[str, tuple[int, ...]], torch.Tensor], n_shards: int = 3,
                     tokenizer_cache: Path | None = None) -> Path:
    """Write config, processor/generation configs, tokenizer files and `n_shards` bf16
    safetensors shards with an index; `tensor(name, shape)` gives each weight, and shards are
    made one at a time so a 4B checkpoint never sits in memory whole."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = parse_config(config, PUBLISHED_PROCESSOR_CONFIG)
    shapes = expected_tensor_shapes(cfg)
    names = list(shapes)
    sizes = [int(torch.Size(shapes[n]).numel()) for n in names]
    target = sum(sizes) / n_shards
    groups: list[list[str]] = [[]]
    filled = 0.0
    for name, size in zip(names, sizes):
        if filled >= target * len(groups) and len(groups) < n_shards:
            groups.append([])
        groups[-1].append(name)
        filled += size
    weight_map: dict[str, str] = {}
    total_bytes = 0
    for i, group in enumerate(groups, start=1):
        shard = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        tensors = {n: tensor(n, shapes[n]).to(torch.bfloat16).contiguous() for n in group}
        save_file(tensors, str(out / shard), metadata={"format": "pt"})
        total_bytes += sum(t.numel() * 2 for t in tensors.values())
        weight_map.update({n: shard for n in group})
        del tensors
    index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "processor_config.json").write_text(json.dumps(PUBLISHED_PROCESSOR_CONFIG, indent=2))
    (out / "generation_config.json").write_text(json.dumps(PUBLISHED_GENERATION_CONFIG, indent=2))
    write_tokenizer_files(out, cache_dir=tokenizer_cache)
    return out
