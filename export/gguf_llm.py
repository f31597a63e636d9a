"""Write the LLM half of a checkpoint as a llama.cpp `qwen3vl` GGUF (docs/format.md#gguf).

Tensors are streamed: the header and tensor index are written first, then each tensor is
read from the checkpoint, converted and written, so memory holds one tensor at a time.
"""
from __future__ import annotations

import re
from pathlib import Path

import gguf
import numpy as np

from edge_runtime.bundle import GGUF_CONFIG_SHA256_KEY, GGUF_FORMAT_KEY, GGUF_FORMAT_VERSION, GGUF_MODEL_TYPE_KEY
from edge_runtime.errors import InputError

from .checkpoint import Checkpoint, MossAudioConfig
from .gguf_tokenizer import add_tokenizer

ARCH = "qwen3vl"

_LAYER_MAP = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOP_MAP = {
    "language_model.embed_tokens.weight": "token_embd.weight",
    "language_model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_RE = re.compile(r"^language_model\.layers\.(\d+)\.(.+)$")

OUTPUT_TYPES = {"F32": gguf.GGMLQuantizationType.F32, "F16": gguf.GGMLQuantizationType.F16}
FILE_TYPES = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16}


def gguf_name(checkpoint_name: str) -> str | None:
    """The llama.cpp name of an LLM tensor, or None for a tensor of the audio side."""
    if checkpoint_name in _TOP_MAP:
        return _TOP_MAP[checkpoint_name]
    match = _LAYER_RE.match(checkpoint_name)
    if match:
        return f"blk.{match.group(1)}.{_LAYER_MAP[match.group(2)]}"
    return None


def rope_sections(head_dim: int) -> list[int]:
    """4 sections summing to head_dim/2, last 0, proportioned like Qwen3-VL's [24, 20, 20, 0].
    Every section receives the same position for our inputs, so the split does not matter
    numerically; llama.cpp only requires the sum."""
    half = head_dim // 2
    first = round(half * 0.375)
    second = (half - first) // 2
    return [first, second, half - first - second, 0]


def _write_hparams(writer: gguf.GGUFWriter, cfg: MossAudioConfig, file_type: str,
                   config_sha256: str, name: str) -> None:
    lm = cfg.language
    writer.add_name(name)
    writer.add_block_count(lm.num_hidden_layers)
    writer.add_context_length(lm.max_position_embeddings)
    writer.add_embedding_length(lm.hidden_size)
    writer.add_feed_forward_length(lm.intermediate_size)
    writer.add_head_count(lm.num_attention_heads)
    writer.add_head_count_kv(lm.num_key_value_heads)
    writer.add_key_length(lm.head_dim)
    writer.add_value_length(lm.head_dim)
    writer.add_rope_freq_base(lm.rope_theta)
    writer.add_layer_norm_rms_eps(lm.rms_norm_eps)
    writer.add_rope_dimension_sections(rope_sections(lm.head_dim))
    writer.add_num_deepstack_layers(cfg.num_deepstack)
    writer.add_file_type(FILE_TYPES[file_type])
    writer.add_uint32(GGUF_FORMAT_KEY, GGUF_FORMAT_VERSION)
    writer.add_string(GGUF_MODEL_TYPE_KEY, cfg.model_type)
    writer.add_string(GGUF_CONFIG_SHA256_KEY, config_sha256)


def _converted(array: np.ndarray, file_type: str) -> np.ndarray:
    # 1-D tensors (norms) stay F32 as llama.cpp's converters keep them.
    if file_type == "F16" and array.ndim > 1:
        return array.astype(np.float16)
    return array.astype(np.float32)


def export_llm_gguf(checkpoint: Checkpoint, out_path: Path, file_type: str = "F32",
                    name: str = "MOSS-Audio") -> None:
    if file_type not in OUTPUT_TYPES:
        raise InputError(f"GGUF output type {file_type!r} not one of {sorted(OUTPUT_TYPES)}")
    cfg = checkpoint.config
    writer = gguf.GGUFWriter(str(out_path), ARCH)
    _write_hparams(writer, cfg, file_type, checkpoint.config_sha256, name)
    add_tokenizer(writer, checkpoint.directory, cfg.language.vocab_size)
    plan = [(n, gguf_name(n)) for n in checkpoint.tensor_names if gguf_name(n) is not None]
    for source, target in plan:
        shape = checkpoint.shape_of(source)
        dtype = np.dtype(np.float16 if file_type == "F16" and len(shape) > 1 else np.float32)
        writer.add_tensor_info(target, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for source, _ in plan:
        writer.write_tensor_data(_converted(checkpoint.numpy(source), file_type))
    writer.close()
