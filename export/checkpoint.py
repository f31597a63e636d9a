"""Read a published MOSS-Audio checkpoint directory: configs, and tensors one at a time.

Everything is validated before any output is written, so a bad checkpoint fails fast with
the file and tensor named instead of half-way through an export.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from safetensors import safe_open

from edge_runtime.bundle import SUPPORTED_MODEL_TYPES
from edge_runtime.errors import InputError
from edge_runtime.features import HOP_LENGTH, N_FFT, N_MELS, SAMPLE_RATE


class CheckpointError(InputError):
    """The directory is not a usable MOSS-Audio checkpoint; the message names the culprit."""


# Fields that do not change the computation (training knobs, bookkeeping). Anything neither
# here nor read below is refused: an unknown field may change the architecture.
_ROOT_IGNORED = {
    "architectures", "auto_map", "dtype", "torch_dtype", "transformers_version", "ignore_index",
    "pad_token_id", "initializer_range", "use_cache", "_name_or_path", "vocab_size",
    "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
    "max_position_embeddings", "rms_norm_eps", "num_hidden_layers", "is_encoder_decoder",
}
_AUDIO_IGNORED = {
    "dropout", "attention_dropout", "activation_dropout", "_attn_implementation",
    "pretrained_path", "conv_chunksize", "encoder_attention_window_size", "model_type",
    "init_std", "dtype", "torch_dtype", "encoder_layerdrop", "scale_embedding",
}
_LANGUAGE_IGNORED = {
    "initializer_range", "use_cache", "attention_dropout", "model_type", "dtype", "torch_dtype",
    "bos_token_id", "eos_token_id", "pad_token_id", "architectures", "transformers_version",
    "max_window_layers", "sliding_window", "layer_types", "tie_word_embeddings",
}


@dataclass(frozen=True)
class AudioEncoderConfig:
    d_model: int
    output_dim: int
    num_mel_bins: int
    encoder_layers: int
    encoder_attention_heads: int
    encoder_ffn_dim: int
    downsample_hidden_size: int
    n_window: int
    max_source_positions: int
    layer_norm_eps: float
    deepstack_encoder_layer_indexes: tuple[int, ...]

    @property
    def head_dim(self) -> int:
        return self.d_model // self.encoder_attention_heads

    @property
    def conv_freq_bins(self) -> int:
        return downsampled_length(self.num_mel_bins)

    @property
    def chunk_frames(self) -> int:
        return 2 * self.n_window


@dataclass(frozen=True)
class LanguageConfig:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    vocab_size: int


@dataclass(frozen=True)
class ProcessorConfig:
    sample_rate: int = SAMPLE_RATE
    n_mels: int = N_MELS
    n_fft: int = N_FFT
    hop_length: int = HOP_LENGTH
    enable_time_marker: bool = True
    audio_token_id: int = 151654
    audio_start_id: int = 151669
    audio_end_id: int = 151670


@dataclass(frozen=True)
class MossAudioConfig:
    model_type: str
    audio: AudioEncoderConfig
    language: LanguageConfig
    adapter_hidden_size: int
    num_deepstack: int  # K: DeepStack vectors injected after LLM layers 0..K-1
    bos_token_id: int
    eos_token_id: int
    tie_word_embeddings: bool
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)


def downsampled_length(n: int | torch.Tensor) -> int | torch.Tensor:
    """Length after the three stride-2 convolutions (kernel 3, padding 1): of one length,
    or elementwise of an integer tensor of lengths."""
    for _ in range(3):
        # tensors divide as the released encoders were traced: the ONNX graph, and so the
        # shipped nano bundle's bytes, depend on which floor division is traced
        n = (torch.div(n - 1, 2, rounding_mode="floor") if isinstance(n, torch.Tensor) else (n - 1) // 2) + 1
    return n


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (not a MOSS-Audio checkpoint directory?)")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return value


def _require(section: dict, key: str, where: str, kind: type):
    if key not in section:
        raise CheckpointError(f"config.json: {where}{key} is missing")
    value = section[key]
    if kind is float and isinstance(value, int):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise CheckpointError(f"config.json: {where}{key}={value!r} should be {kind.__name__}")
    return value


def _refuse_unknown(section: dict, read: set[str], ignored: set[str], where: str) -> None:
    unknown = sorted(set(section) - read - ignored)
    if unknown:
        raise CheckpointError(
            f"config.json: unknown field(s) {', '.join(where + k for k in unknown)}; "
            "they may change the architecture, so the export refuses to guess"
        )


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckpointError(f"config.json: {message}")


def parse_config(config: dict, processor: dict | None = None) -> MossAudioConfig:
    model_type = config.get("model_type")
    _expect(model_type in SUPPORTED_MODEL_TYPES,
            f"model_type={model_type!r} is not one of {SUPPORTED_MODEL_TYPES}")
    audio = config.get("audio_config")
    language = config.get("language_config")
    _expect(isinstance(audio, dict), "audio_config is missing")
    _expect(isinstance(language, dict), "language_config is missing")

    a = "audio_config."
    audio_int = ["d_model", "output_dim", "num_mel_bins", "encoder_layers",
                 "encoder_attention_heads", "encoder_ffn_dim", "downsample_hidden_size",
                 "n_window", "max_source_positions"]
    audio_values = {k: _require(audio, k, a, int) for k in audio_int}
    indexes = audio.get("deepstack_encoder_layer_indexes") or []
    _expect(isinstance(indexes, list) and all(isinstance(i, int) for i in indexes),
            "audio_config.deepstack_encoder_layer_indexes must be a list of ints")
    _expect(audio.get("activation_function", "gelu") == "gelu",
            f"audio_config.activation_function={audio.get('activation_function')!r} (only gelu)")
    _expect(audio.get("downsample_rate", 8) == 8,
            f"audio_config.downsample_rate={audio.get('downsample_rate')!r} (only 8)")
    audio_cfg = AudioEncoderConfig(
        **audio_values,
        layer_norm_eps=float(audio.get("layer_norm_eps", 1e-5)),
        deepstack_encoder_layer_indexes=tuple(indexes),
    )
    _refuse_unknown(audio, set(audio_int) | {"deepstack_encoder_layer_indexes",
                    "activation_function", "downsample_rate", "layer_norm_eps"},
                    _AUDIO_IGNORED, a)
    _expect(audio_cfg.d_model % audio_cfg.encoder_attention_heads == 0,
            "audio_config.d_model must be divisible by encoder_attention_heads")
    _expect(all(0 <= i < audio_cfg.encoder_layers for i in indexes),
            f"audio_config.deepstack_encoder_layer_indexes {indexes} outside "
            f"0..{audio_cfg.encoder_layers - 1}")

    l = "language_config."
    lang_int = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "vocab_size"]
    lang_values = {k: _require(language, k, l, int) for k in lang_int}
    head_dim = language.get("head_dim") or lang_values["hidden_size"] // lang_values["num_attention_heads"]
    rope = language.get("rope_parameters") or {}
    rope_theta = language.get("rope_theta", rope.get("rope_theta", 10000.0))
    _expect(rope.get("rope_type", "default") == "default" and language.get("rope_scaling") is None,
            "language_config rope scaling is not supported")
    _expect(language.get("hidden_act", "silu") == "silu",
            f"language_config.hidden_act={language.get('hidden_act')!r} (only silu)")
    _expect(not language.get("attention_bias", False), "language_config.attention_bias must be false")
    _expect(not language.get("use_sliding_window", False),
            "language_config.use_sliding_window must be false")
    lang_cfg = LanguageConfig(**lang_values, head_dim=int(head_dim), rope_theta=float(rope_theta),
                              rms_norm_eps=float(language.get("rms_norm_eps", 1e-6)))
    _refuse_unknown(language, set(lang_int) | {"head_dim", "rope_parameters", "rope_theta",
                    "rope_scaling", "hidden_act", "attention_bias", "use_sliding_window",
                    "rms_norm_eps"}, _LANGUAGE_IGNORED, l)
    _expect(lang_cfg.num_attention_heads % lang_cfg.num_key_value_heads == 0,
            "language_config.num_attention_heads must be a multiple of num_key_value_heads")

    inject = config.get("deepstack_num_inject_layers")
    k = len(indexes) if inject is None else min(len(indexes), int(inject))
    _expect(k <= lang_cfg.num_hidden_layers, "more DeepStack layers than LLM layers")
    root_read = {"model_type", "audio_config", "language_config", "adapter_hidden_size",
                 "deepstack_num_inject_layers", "bos_token_id", "eos_token_id",
                 "tie_word_embeddings"}
    _refuse_unknown(config, root_read, _ROOT_IGNORED, "")
    _expect(config.get("vocab_size", lang_cfg.vocab_size) == lang_cfg.vocab_size,
            "vocab_size disagrees with language_config.vocab_size")
    return MossAudioConfig(
        model_type=model_type,
        audio=audio_cfg,
        language=lang_cfg,
        adapter_hidden_size=_require(config, "adapter_hidden_size", "", int),
        num_deepstack=k,
        bos_token_id=int(config.get("bos_token_id", 151643)),
        eos_token_id=int(config.get("eos_token_id", 151645)),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        processor=parse_processor_config(processor or {}),
    )


def parse_processor_config(processor: dict) -> ProcessorConfig:
    """processor_config.json, with the published values as defaults when it is absent."""
    mel = processor.get("mel_config") or {}
    defaults = ProcessorConfig()
    result = ProcessorConfig(
        sample_rate=int(mel.get("sr", defaults.sample_rate)),
        n_mels=int(mel.get("mel_dim", defaults.n_mels)),
        n_fft=int(mel.get("n_fft", defaults.n_fft)),
        hop_length=int(mel.get("hop", defaults.hop_length)),
        enable_time_marker=bool(processor.get("enable_time_marker", defaults.enable_time_marker)),
        audio_token_id=int(processor.get("audio_token_id", defaults.audio_token_id)),
        audio_start_id=int(processor.get("audio_start_id", defaults.audio_start_id)),
        audio_end_id=int(processor.get("audio_end_id", defaults.audio_end_id)),
    )
    front_end = (result.sample_rate, result.n_mels, result.n_fft, result.hop_length)
    if front_end != (SAMPLE_RATE, N_MELS, N_FFT, HOP_LENGTH) or mel.get("use_whisper_feature_extractor") is False:
        raise CheckpointError(
            f"processor_config.json: mel_config {mel} differs from the Whisper front end "
            "(16 kHz, 128 mels, n_fft 400, hop 160) this runtime implements")
    return result


def expected_tensor_shapes(cfg: MossAudioConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the checkpoint must hold, with its shape."""
    a, lm = cfg.audio, cfg.language
    c, d = a.downsample_hidden_size, a.d_model
    shapes: dict[str, tuple[int, ...]] = {
        "audio_encoder.conv1.weight": (c, 1, 3, 3), "audio_encoder.conv1.bias": (c,),
        "audio_encoder.conv2.weight": (c, c, 3, 3), "audio_encoder.conv2.bias": (c,),
        "audio_encoder.conv3.weight": (c, c, 3, 3), "audio_encoder.conv3.bias": (c,),
        "audio_encoder.stem_proj.weight": (d, c * a.conv_freq_bins),
        "audio_encoder.stem_proj.bias": (d,),
        "audio_encoder.layer_norm.weight": (d,), "audio_encoder.layer_norm.bias": (d,),
    }
    if a.output_dim != d:
        shapes["audio_encoder.out_proj.weight"] = (a.output_dim, d)
    for n in range(a.encoder_layers):
        p = f"audio_encoder.layers.{n}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{p}self_attn.{proj}.weight"] = (d, d)
            if proj != "k_proj":
                shapes[f"{p}self_attn.{proj}.bias"] = (d,)
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            shapes[f"{p}{norm}.weight"] = (d,)
            shapes[f"{p}{norm}.bias"] = (d,)
        shapes[f"{p}fc1.weight"] = (a.encoder_ffn_dim, d)
        shapes[f"{p}fc1.bias"] = (a.encoder_ffn_dim,)
        shapes[f"{p}fc2.weight"] = (d, a.encoder_ffn_dim)
        shapes[f"{p}fc2.bias"] = (d,)
    h, ah = lm.hidden_size, cfg.adapter_hidden_size
    mlps = ["audio_adapter"] + [f"deepstack_audio_merger_list.{k}" for k in range(cfg.num_deepstack)]
    for mlp in mlps:
        shapes[f"{mlp}.gate_proj.weight"] = (ah, a.output_dim)
        shapes[f"{mlp}.up_proj.weight"] = (ah, a.output_dim)
        shapes[f"{mlp}.down_proj.weight"] = (h, ah)
    shapes["language_model.embed_tokens.weight"] = (lm.vocab_size, h)
    shapes["language_model.norm.weight"] = (h,)
    q, kv = lm.num_attention_heads * lm.head_dim, lm.num_key_value_heads * lm.head_dim
    for n in range(lm.num_hidden_layers):
        p = f"language_model.layers.{n}."
        shapes[f"{p}input_layernorm.weight"] = (h,)
        shapes[f"{p}post_attention_layernorm.weight"] = (h,)
        shapes[f"{p}self_attn.q_proj.weight"] = (q, h)
        shapes[f"{p}self_attn.k_proj.weight"] = (kv, h)
        shapes[f"{p}self_attn.v_proj.weight"] = (kv, h)
        shapes[f"{p}self_attn.o_proj.weight"] = (h, q)
        shapes[f"{p}self_attn.q_norm.weight"] = (lm.head_dim,)
        shapes[f"{p}self_attn.k_norm.weight"] = (lm.head_dim,)
        shapes[f"{p}mlp.gate_proj.weight"] = (lm.intermediate_size, h)
        shapes[f"{p}mlp.up_proj.weight"] = (lm.intermediate_size, h)
        shapes[f"{p}mlp.down_proj.weight"] = (h, lm.intermediate_size)
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (lm.vocab_size, h)
    return shapes


# Present in some checkpoints (MOSS-Music) but recomputed from the config, so never read.
OPTIONAL_TENSORS = {"audio_encoder.embed_positions.inv_timescales"}

# The tokenizer files the export reads (into the GGUF and the manifest's token ids).
TOKENIZER_FILES = ("vocab.json", "merges.txt", "added_tokens.json", "tokenizer_config.json",
                   "chat_template.jinja")


def _safetensors_header(path: Path) -> dict:
    """Parse a shard's header and check the file really holds all the bytes it promises."""
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path}: truncated (no safetensors header)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > size - 8:
            raise CheckpointError(f"{path}: truncated or not a safetensors file")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path}: corrupt safetensors header ({exc})") from exc
    header.pop("__metadata__", None)
    end = max((t["data_offsets"][1] for t in header.values()), default=0)
    if 8 + header_len + end > size:
        raise CheckpointError(
            f"{path}: truncated: header promises {8 + header_len + end} bytes, file has {size}")
    return header


class Checkpoint:
    """A validated checkpoint directory; tensors are read lazily, one at a time."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise CheckpointError(f"{self.directory}: not a directory")
        self.config_path = self.directory / "config.json"
        raw_config = _read_json(self.config_path)
        processor_path = self.directory / "processor_config.json"
        raw_processor = _read_json(processor_path) if processor_path.exists() else {}
        self.config = parse_config(raw_config, raw_processor)
        self.config_sha256 = hashlib.sha256(self.config_path.read_bytes()).hexdigest()
        self._shard_of = self._index_shards()
        self._check_tensors()
        self._check_tokenizer_files()

    def _index_shards(self) -> dict[str, Path]:
        index_path = self.directory / "model.safetensors.index.json"
        if index_path.exists():
            weight_map = _read_json(index_path).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index_path}: no weight_map")
            shard_of = {name: self.directory / shard for name, shard in weight_map.items()}
        else:
            single = self.directory / "model.safetensors"
            if not single.exists():
                raise CheckpointError(
                    f"{self.directory}: no model.safetensors.index.json or model.safetensors")
            shard_of = {name: single for name in _safetensors_header(single)}
        self._headers: dict[Path, dict] = {}
        for shard in sorted(set(shard_of.values())):
            if not shard.is_file():
                raise CheckpointError(f"{shard}: shard listed in the index is missing")
            self._headers[shard] = _safetensors_header(shard)
        for name, shard in shard_of.items():
            if name not in self._headers[shard]:
                raise CheckpointError(f"{shard}: does not contain tensor {name} listed in the index")
        return shard_of

    def _check_tensors(self) -> None:
        expected = expected_tensor_shapes(self.config)
        present = set(self._shard_of) - OPTIONAL_TENSORS
        missing = sorted(set(expected) - present)
        if missing:
            raise CheckpointError(
                f"{self.directory}: missing tensor {missing[0]}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        unexpected = sorted(present - set(expected))
        if unexpected:
            raise CheckpointError(
                f"{self._shard_of[unexpected[0]]}: unexpected tensor {unexpected[0]} "
                "(config and weights disagree)")
        for name, shape in expected.items():
            shard = self._shard_of[name]
            actual = tuple(self._headers[shard][name]["shape"])
            if actual != shape:
                raise CheckpointError(
                    f"{shard.name}: tensor {name} has shape {list(actual)}, config implies {list(shape)}")

    def _check_tokenizer_files(self) -> None:
        for name in TOKENIZER_FILES:
            if not (self.directory / name).is_file():
                raise CheckpointError(f"{self.directory / name}: tokenizer file missing "
                                      f"(the export needs {', '.join(TOKENIZER_FILES)})")

    @property
    def tensor_names(self) -> list[str]:
        return list(expected_tensor_shapes(self.config))

    def shape_of(self, name: str) -> tuple[int, ...]:
        return tuple(self._headers[self._shard_of[name]][name]["shape"])

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor as float32 (bf16 widens exactly)."""
        shard = self._shard_of.get(name)
        if shard is None:
            raise CheckpointError(f"{self.directory}: no tensor {name}")
        with safe_open(str(shard), framework="pt") as f:
            return f.get_tensor(name).to(torch.float32)

    def tensors(self, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.tensor_names:
            if name.startswith(prefix):
                yield name, self.tensor(name)

    def numpy(self, name: str) -> np.ndarray:
        return self.tensor(name).numpy()
