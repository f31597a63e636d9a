"""The PyTorch MOSS-Audio model, written from docs/format.md (encoder, DeepStack rows,
language model, prompt): what the export traces and what the tests hold the runtime to.

Module and parameter names equal the checkpoint's tensor names, so a checkpoint loads with a
strict `load_state_dict` and any naming mistake fails loudly.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import AudioEncoderConfig, Checkpoint, LanguageConfig, MossAudioConfig, downsampled_length


def gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x)  # erf form, as nn.GELU() upstream


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)), no biases: the audio adapter, each DeepStack merger and
    the MLP of each Qwen3 layer."""

    def __init__(self, dim_in: int, dim_hidden: int, dim_out: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim_in, dim_hidden, bias=False)
        self.up_proj = nn.Linear(dim_in, dim_hidden, bias=False)
        self.down_proj = nn.Linear(dim_hidden, dim_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class EncoderAttention(nn.Module):
    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        d = cfg.d_model
        self.heads = cfg.encoder_attention_heads
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class EncoderLayer(nn.Module):
    """Whisper encoder layer: pre-LayerNorm attention and fc1-GELU-fc2, both residual."""

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.self_attn = EncoderAttention(cfg)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.final_layer_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(cfg.d_model, cfg.encoder_ffn_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_dim, cfg.d_model)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), key_mask)
        return x + self.fc2(gelu(self.fc1(self.final_layer_norm(x))))


def sinusoid_positions(length: int, dim: int) -> torch.Tensor:
    """[length, dim]: sin then cos of t * exp(-ln(10000)/(dim/2 - 1) * i)."""
    inv = torch.exp(-math.log(10000.0) / (dim // 2 - 1) * torch.arange(dim // 2, dtype=torch.float32))
    t = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([t.sin(), t.cos()], dim=1)


class AudioEncoder(nn.Module):
    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.downsample_hidden_size
        self.conv1 = nn.Conv2d(1, c, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.stem_proj = nn.Linear(c * cfg.conv_freq_bins, cfg.d_model)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.layer_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        if cfg.output_dim != cfg.d_model:
            self.out_proj = nn.Linear(cfg.d_model, cfg.output_dim, bias=False)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(x) if hasattr(self, "out_proj") else x

    def stem(self, mel: torch.Tensor) -> torch.Tensor:
        """mel [n, n_mels, T] -> [n, T'', d_model]: the convolutions and their projection,
        before the positions are added."""
        x = gelu(self.conv1(mel[:, None]))
        x = gelu(self.conv2(x))
        x = gelu(self.conv3(x))  # [n, C, F, T'']
        return self.stem_proj(x.permute(0, 3, 1, 2).flatten(2))  # channel-major: index c*F + f

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """mel [n, n_mels, T] (chunks, each zero-padded to T), lengths [n] valid frames.

        Returns the final states [n, T'', output_dim] and the kept DeepStack states, in the
        order of deepstack_encoder_layer_indexes (all before the final norm).
        """
        x = self.stem(mel)
        x = x + sinusoid_positions(x.shape[1], x.shape[2]).to(x.dtype)
        key_mask = torch.arange(x.shape[1])[None, :] < downsampled_length(lengths)[:, None]
        kept: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(self.layers):
            x = layer(x, key_mask)
            kept[i] = x
        deepstack = [self.project(kept[i]) for i in self.cfg.deepstack_encoder_layer_indexes]
        return self.project(self.layer_norm(x)), deepstack


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class Qwen3Attention(nn.Module):
    def __init__(self, cfg: LanguageConfig):
        super().__init__()
        self.cfg = cfg
        h, hd = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(h, cfg.num_attention_heads * hd, bias=False)
        self.k_proj = nn.Linear(h, cfg.num_key_value_heads * hd, bias=False)
        self.v_proj = nn.Linear(h, cfg.num_key_value_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.num_attention_heads * hd, h, bias=False)
        self.q_norm = RMSNorm(hd, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(hd, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [..., t, hidden]: one sequence, or a batch of right-padded ones (training)."""
        *lead, t, _ = x.shape
        c = self.cfg
        q = self.q_norm(self.q_proj(x).view(*lead, t, c.num_attention_heads, c.head_dim)).transpose(-2, -3)
        k = self.k_norm(self.k_proj(x).view(*lead, t, c.num_key_value_heads, c.head_dim)).transpose(-2, -3)
        v = self.v_proj(x).view(*lead, t, c.num_key_value_heads, c.head_dim).transpose(-2, -3)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        groups = c.num_attention_heads // c.num_key_value_heads
        k, v = k.repeat_interleave(groups, -3), v.repeat_interleave(groups, -3)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(-2, -3).reshape(*lead, t, -1))


class Qwen3Layer(nn.Module):
    def __init__(self, cfg: LanguageConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Qwen3Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3Model(nn.Module):
    def __init__(self, cfg: LanguageConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Qwen3Layer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hd = self.cfg.head_dim
        inv = 1.0 / (self.cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        angles = positions.to(torch.float64)[:, None] * inv[None, :]
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos().float(), angles.sin().float()


class AudioRowsModel(nn.Module):
    """The audio side alone (encoder, adapter, DeepStack mergers): what the ONNX graph holds."""

    def __init__(self, cfg: MossAudioConfig):
        super().__init__()
        self.cfg = cfg
        a, lm = cfg.audio, cfg.language
        self.audio_encoder = AudioEncoder(a)
        self.audio_adapter = GatedMLP(a.output_dim, cfg.adapter_hidden_size, lm.hidden_size)
        self.deepstack_audio_merger_list = nn.ModuleList(
            GatedMLP(a.output_dim, cfg.adapter_hidden_size, lm.hidden_size)
            for _ in range(cfg.num_deepstack))

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint):
        """Built on the meta device and filled by name with a strict load: no random init,
        and a naming mistake fails loudly."""
        with torch.device("meta"):
            model = cls(checkpoint.config)
        state = {name: checkpoint.tensor(name) for name in model.state_dict()}
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()

    def audio_rows(self, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Chunks [n, n_mels, T] -> [n, T'', (1+K)*hidden]: adapter output, then K DeepStack
        vectors, the layout llama.cpp's qwen3vl embedding input takes."""
        final, kept = self.audio_encoder(mel, lengths)
        parts = [self.audio_adapter(final)]
        parts += [merger(state) for merger, state in zip(self.deepstack_audio_merger_list, kept)]
        return torch.cat(parts, dim=-1)

    @torch.no_grad()
    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """A whole clip's mel [n_mels, T] -> [N, (1+K)*hidden] rows, chunked as upstream does:
        chunks of 2*n_window frames, the last holding the remainder, zero-padded to the
        longest chunk of the clip and encoded independently."""
        size = self.cfg.audio.chunk_frames
        pieces = list(mel.split(size, dim=1))
        lengths = torch.tensor([p.shape[1] for p in pieces])
        longest = int(lengths.max())
        batch = torch.stack([F.pad(p, (0, longest - p.shape[1])) for p in pieces])
        rows = self.audio_rows(batch, lengths)
        valid = downsampled_length(lengths)
        return torch.cat([rows[i, : int(valid[i])] for i in range(len(pieces))])


class MossAudioReference(AudioRowsModel):
    """The whole model. `MossAudioReference.from_checkpoint(Checkpoint(dir))` loads it."""

    def __init__(self, cfg: MossAudioConfig):
        super().__init__(cfg)
        self.language_model = Qwen3Model(cfg.language)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.language.hidden_size, cfg.language.vocab_size, bias=False)

    def output_weight(self) -> torch.Tensor:
        return self.language_model.embed_tokens.weight if self.cfg.tie_word_embeddings else self.lm_head.weight

    # --- language side ----------------------------------------------------------------------

    def hidden_states(self, input_ids: torch.Tensor, audio_rows: torch.Tensor | None,
                      positions: torch.Tensor | None = None) -> torch.Tensor:
        """Final-normed hidden states for a prompt whose audio placeholders take `audio_rows`
        ([N, (1+K)*hidden]) in order: slice 0 replaces the embeddings, slice k is added after
        decoder layer k at the placeholder positions only."""
        lm = self.language_model
        hidden = self.cfg.language.hidden_size
        x = lm.embed_tokens(input_ids)
        is_audio = input_ids == self.cfg.processor.audio_token_id
        deepstack: list[torch.Tensor] = []
        if audio_rows is not None:
            if int(is_audio.sum()) != audio_rows.shape[0]:
                raise ValueError(f"{int(is_audio.sum())} placeholders but {audio_rows.shape[0]} audio rows")
            x = x.clone()
            x[is_audio] = audio_rows[:, :hidden]
            deepstack = [audio_rows[:, hidden * (k + 1): hidden * (k + 2)] for k in range(self.cfg.num_deepstack)]
        if positions is None:
            positions = torch.arange(input_ids.shape[-1])
        cos, sin = lm.rope(positions)
        for i, layer in enumerate(lm.layers):
            x = layer(x, cos, sin)
            if i < len(deepstack):
                x = x.clone()
                x[is_audio] = x[is_audio] + deepstack[i]
        return lm.norm(x)

    @torch.no_grad()
    def last_logits(self, input_ids: torch.Tensor, audio_rows: torch.Tensor | None) -> torch.Tensor:
        return self.hidden_states(input_ids, audio_rows)[-1] @ self.output_weight().T

    @torch.no_grad()
    def greedy(self, input_ids: torch.Tensor, audio_rows: torch.Tensor | None, max_tokens: int,
               stop_ids: Sequence[int] = ()) -> tuple[list[int], list[float]]:
        """Greedy tokens (stop excluded) and the top-1/top-2 logit margin at each step."""
        tokens: list[int] = []
        margins: list[float] = []
        ids = input_ids
        for _ in range(max_tokens):
            logits = self.last_logits(ids, audio_rows)
            top2 = logits.topk(2)
            margins.append(float(top2.values[0] - top2.values[1]))
            token = int(top2.indices[0])
            if token in stop_ids:
                break
            tokens.append(token)
            ids = torch.cat([ids, torch.tensor([token])])
        return tokens, margins


def prompt_ids(n_audio: int, encode: Callable[[str], list[int]], instruction: str,
               processor_ids: tuple[int, int, int],
               system: str = "You are a helpful assistant.", time_markers: bool = True) -> list[int]:
    """The prompt of docs/format.md#prompt, written independently of the runtime's prompt builder so the tests
    compare two implementations. `encode` tokenizes text with special tokens recognised."""
    audio_token, audio_start, audio_end = processor_ids
    span: list[int] = []
    for i in range(1, n_audio + 1):
        span.append(audio_token)
        if time_markers and i % 25 == 0:  # a complete 2 s group: marker for its end second
            span += encode(str(2 * i // 25))
    head = encode(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n")
    tail = encode(f"\n{instruction}<|im_end|>\n<|im_start|>assistant\n")
    return head + [audio_start] + span + [audio_end] + tail
