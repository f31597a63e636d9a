"""The GGUF LLM through llama.cpp's C API (llama-cpp-python's low-level bindings).

Audio rows enter as embedding batches of `(1+K)*hidden` floats per row (adapter output then
the K DeepStack slices, which llama.cpp adds after layers 0..K-1); text and time markers
enter as token batches, which get no DeepStack. One sequence, positions counted here.
"""
from __future__ import annotations

import ctypes
import os
import unicodedata
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import llama_cpp as C
import numpy as np

from .bundle import BundleError

MROPE_SECTIONS = 4  # llama.cpp's qwen3vl position layout: 4 position values per embedding row
GGUF_MAGIC = b"GGUF"
KV_CACHE_TYPES = {"f32": 0, "f16": 1, "q8_0": 8}  # ggml_type ids
# llama_flash_attn_type. On CPU, flash attention rounds Q and the softmax through f16
# (measured: 1.8e-3 relative logit error against an fp32 reference, 5e-7 with it off).
FLASH_ATTENTION = {"auto": -1, "off": 0, "on": 1}


_log_sink: Callable[[str], None] | None = None  # gets llama.cpp's log text; dropped when None


def _route_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    if _log_sink is not None:
        _log_sink(text.decode("utf-8", errors="replace"))


_LOG_CALLBACK = C.llama_log_callback(_route_log)  # kept referenced: C holds the pointer
_backend_ready = False


def _init_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        if not os.environ.get("MOSS_EDGE_LLAMA_LOG"):
            C.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
        C.llama_backend_init()
        _backend_ready = True


@contextmanager
def llama_log_to(sink: Callable[[str], None]) -> Iterator[None]:
    """Send llama.cpp's log text to `sink` while inside: llama_model_quantize reports its
    progress only there."""
    global _log_sink
    _init_backend()
    C.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
    _log_sink = sink
    try:
        yield
    finally:
        _log_sink = None
        if os.environ.get("MOSS_EDGE_LLAMA_LOG"):
            C.llama_log_set(None, ctypes.c_void_p(0))  # back to llama.cpp's own stderr logger


def _cpu_has_amx() -> bool:
    _init_backend()
    return b"AMX_INT8 = 1" in C.llama_print_system_info()


_extra_layouts_ok: bool | None = None  # decided once per process


def _cpu_extra_layouts_usable() -> bool:
    """Whether llama.cpp may place weights in the CPU's extra (repacked) layouts.

    On CPUs with AMX the CPU device offers [AMX, CPU_REPACK], AMX first. This build's AMX
    matmul segfaults in llama_decode on quantized weights (gcc drops the stores that fill its
    tile configuration; llama.cpp PR #26954), so AMX is removed from that list (a static
    NULL-terminated array in libggml-cpu, read when a model loads), which keeps CPU_REPACK's
    AVX2/AVX512 layouts. If the list is not what this expects, no extra layout is used:
    plain CPU kernels, slower but correct."""
    global _extra_layouts_ok
    if _extra_layouts_ok is None:
        _extra_layouts_ok = not _cpu_has_amx() or _drop_amx_layout()
    return _extra_layouts_ok


def _drop_amx_layout() -> bool:
    from llama_cpp._ggml import libggml as ggml  # resolves libggml-base's symbols too

    void_p = ctypes.c_void_p
    ggml.ggml_backend_dev_by_type.argtypes, ggml.ggml_backend_dev_by_type.restype = [ctypes.c_int], void_p
    ggml.ggml_backend_dev_backend_reg.argtypes, ggml.ggml_backend_dev_backend_reg.restype = [void_p], void_p
    ggml.ggml_backend_reg_get_proc_address.argtypes = [void_p, ctypes.c_char_p]
    ggml.ggml_backend_reg_get_proc_address.restype = void_p
    ggml.ggml_backend_buft_name.argtypes, ggml.ggml_backend_buft_name.restype = [void_p], ctypes.c_char_p
    cpu = ggml.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    address = cpu and ggml.ggml_backend_reg_get_proc_address(ggml.ggml_backend_dev_backend_reg(cpu),
                                                               b"ggml_backend_dev_get_extra_bufts")
    if not address:
        return False
    layouts = ctypes.CFUNCTYPE(ctypes.POINTER(void_p), void_p)(address)(cpu)
    entries = []
    while layouts[len(entries)]:
        entries.append(layouts[len(entries)])
    names = [ggml.ggml_backend_buft_name(e) for e in entries]
    if b"AMX" not in names:
        return True
    if names[0] != b"AMX":
        return False
    kept = entries[1:]
    for i in range(len(entries)):
        layouts[i] = kept[i] if i < len(kept) else None
    return [ggml.ggml_backend_buft_name(layouts[i]) for i in range(len(kept))] == names[1:]


def mrope_positions(start: int, n: int) -> np.ndarray:
    """Positions of an embedding batch on an M-RoPE model: section-major `pos[j*n + i]`,
    sections 0..2 the absolute position, section 3 zero (SPEC §7)."""
    absolute = np.arange(start, start + n, dtype=np.int32)
    return np.concatenate([absolute, absolute, absolute, np.zeros(n, dtype=np.int32)])


class _Batch:
    """A llama_batch over numpy arrays we own: llama_batch_init would allocate only
    n_tokens positions, too few for an M-RoPE embedding batch."""

    def __init__(self, n: int, positions: np.ndarray, tokens: np.ndarray | None = None,
                 embeddings: np.ndarray | None = None, all_logits: bool = False):
        self._positions = np.ascontiguousarray(positions, dtype=np.int32)
        self._n_seq = np.ones(n, dtype=np.int32)
        self._seq0 = (C.llama_seq_id * 1)(0)
        self._seq_ptrs = (ctypes.POINTER(C.llama_seq_id) * n)(*([self._seq0] * n))
        self._logits = np.zeros(n, dtype=np.int8)
        self._logits[0 if all_logits else -1:] = 1
        self.struct = C.llama_batch()
        self.struct.n_tokens = n
        if tokens is not None:
            self._tokens = np.ascontiguousarray(tokens, dtype=np.int32)
            self.struct.token = self._tokens.ctypes.data_as(ctypes.POINTER(C.llama_token))
        else:
            self._embd = np.ascontiguousarray(embeddings, dtype=np.float32)
            self.struct.embd = self._embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        self.struct.pos = self._positions.ctypes.data_as(ctypes.POINTER(C.llama_pos))
        self.struct.n_seq_id = self._n_seq.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        self.struct.seq_id = self._seq_ptrs
        self.struct.logits = self._logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))


def check_gguf_header(path: Path) -> None:
    if not path.is_file():
        raise BundleError(f"{path}: GGUF file not found")
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise BundleError(f"{path}: not a GGUF file (bad magic)")


class LlamaModel:
    """A loaded GGUF and one context (one sequence, its KV cache and position counter)."""

    def __init__(self, path: Path, n_ctx: int = 8192, n_batch: int = 512,
                 threads: int | None = None, gpu_layers: int = 0, kv_type: str = "f16",
                 flash_attention: str = "auto"):
        if kv_type not in KV_CACHE_TYPES:
            raise ValueError(f"KV cache type {kv_type!r} not one of {sorted(KV_CACHE_TYPES)}")
        if flash_attention not in FLASH_ATTENTION:
            raise ValueError(f"flash attention {flash_attention!r} not one of {sorted(FLASH_ATTENTION)}")
        _init_backend()
        check_gguf_header(path)
        model_params = C.llama_model_default_params()
        model_params.n_gpu_layers = gpu_layers
        model_params.use_extra_bufts = _cpu_extra_layouts_usable()
        self.model = C.llama_model_load_from_file(str(path).encode(), model_params)
        if not self.model:
            raise BundleError(f"{path}: llama.cpp could not load this GGUF (corrupt or truncated, "
                              "or an architecture this llama.cpp lacks); set MOSS_EDGE_LLAMA_LOG=1 for details")
        self.vocab = C.llama_model_get_vocab(self.model)
        self.n_vocab = C.llama_vocab_n_tokens(self.vocab)
        self.n_embd = C.llama_model_n_embd(self.model)
        self.n_embd_inp = C.llama_model_n_embd_inp(self.model)
        threads = threads or os.cpu_count() or 1
        ctx_params = C.llama_context_default_params()
        ctx_params.n_ctx = n_ctx
        ctx_params.n_batch = n_batch
        ctx_params.n_ubatch = n_batch
        ctx_params.n_threads = threads
        ctx_params.n_threads_batch = threads
        ctx_params.no_perf = True
        ctx_params.type_k = ctx_params.type_v = KV_CACHE_TYPES[kv_type]
        ctx_params.flash_attn_type = FLASH_ATTENTION[flash_attention]
        self.ctx = C.llama_init_from_model(self.model, ctx_params)
        if not self.ctx:
            C.llama_model_free(self.model)
            raise BundleError(f"{path}: llama.cpp could not create a context of {n_ctx} tokens")
        self.n_ctx = C.llama_n_ctx(self.ctx)
        self.n_batch = n_batch
        self.n_past = 0

    def close(self) -> None:
        if getattr(self, "ctx", None):
            C.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            C.llama_model_free(self.model)
            self.model = None

    def __del__(self) -> None:
        self.close()

    def metadata(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(512)
        n = C.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode() if n >= 0 else None

    # --- tokens and text ---------------------------------------------------------------

    def tokenize(self, text: str, parse_special: bool = True) -> list[int]:
        # Qwen's tokenizer NFC-normalizes first; llama.cpp's does not
        data = unicodedata.normalize("NFC", text).encode("utf-8")
        capacity = len(data) + 16
        buf = (C.llama_token * capacity)()
        n = C.llama_tokenize(self.vocab, data, len(data), buf, capacity, False, parse_special)
        if n < 0:
            raise RuntimeError(f"tokenization needed {-n} tokens, more than {capacity}")
        return list(buf[:n])

    def token_bytes(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = C.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = C.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        return buf.raw[:n]

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", errors="replace")

    # --- evaluation ----------------------------------------------------------------------

    def _decode(self, batch: _Batch, n: int) -> None:
        if self.n_past + n > self.n_ctx:
            raise ValueError(f"prompt of {self.n_past + n} tokens exceeds the context of {self.n_ctx}")
        status = C.llama_decode(self.ctx, batch.struct)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")
        self.n_past += n

    def eval_tokens(self, tokens: Sequence[int], all_logits: bool = False) -> np.ndarray | None:
        """Token batches, one position per token (llama.cpp expands them for M-RoPE).
        With `all_logits`, returns the logits after every token, [len(tokens), n_vocab]
        (draft verification, teacher-forced fidelity)."""
        collected: list[np.ndarray] = []
        for lo in range(0, len(tokens), self.n_batch):
            part = np.asarray(tokens[lo:lo + self.n_batch], dtype=np.int32)
            self._decode(_Batch(len(part), np.arange(self.n_past, self.n_past + len(part)),
                                tokens=part, all_logits=all_logits), len(part))
            if all_logits:
                pointer = C.llama_get_logits(self.ctx)
                collected.append(np.ctypeslib.as_array(pointer, shape=(len(part), self.n_vocab)).copy())
        return np.concatenate(collected) if all_logits else None

    def eval_embeddings(self, rows: np.ndarray) -> None:
        """Embedding batches of audio rows [n, n_embd_inp]."""
        if rows.ndim != 2 or rows.shape[1] != self.n_embd_inp:
            raise ValueError(f"audio rows of shape {rows.shape}, the LLM takes rows of {self.n_embd_inp}")
        for lo in range(0, len(rows), self.n_batch):
            part = rows[lo:lo + self.n_batch]
            self._decode(_Batch(len(part), mrope_positions(self.n_past, len(part)), embeddings=part),
                         len(part))

    def last_logits(self) -> np.ndarray:
        pointer = C.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def truncate(self, n_keep: int) -> None:
        """Forget every position from `n_keep` on (e.g. an instruction suffix after a readout)."""
        C.llama_memory_seq_rm(C.llama_get_memory(self.ctx), 0, n_keep, -1)
        self.n_past = min(self.n_past, n_keep)

    def reset(self) -> None:
        C.llama_memory_clear(C.llama_get_memory(self.ctx), True)
        self.n_past = 0

    def is_end_of_generation(self, token: int) -> bool:
        return bool(C.llama_vocab_is_eog(self.vocab, token))


def choose_token(logits: np.ndarray, temperature: float, top_k: int, top_p: float,
                 rng: np.random.Generator) -> int:
    """Greedy at temperature 0, else temperature / top-k / top-p sampling."""
    if temperature <= 0:
        return int(np.argmax(logits))
    k = min(top_k, len(logits)) if top_k > 0 else len(logits)
    candidates = np.argpartition(-logits, k - 1)[:k]
    scaled = logits[candidates].astype(np.float64) / temperature
    order = np.argsort(-scaled)
    candidates, scaled = candidates[order], scaled[order]
    probs = np.exp(scaled - scaled[0])
    probs /= probs.sum()
    if top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(probs), top_p) + 1)
        candidates, probs = candidates[:keep], probs[:keep] / probs[:keep].sum()
    return int(rng.choice(candidates, p=probs))


def generate(llm: LlamaModel, max_new_tokens: int, stop_ids: Sequence[int], temperature: float = 0.0,
             top_k: int = 50, top_p: float = 1.0, seed: int | None = None) -> Iterator[int]:
    """Tokens after the evaluated prompt, until a stop id (not yielded) or the budget."""
    rng = np.random.default_rng(seed)
    stops = set(stop_ids)
    for _ in range(max_new_tokens):
        token = choose_token(llm.last_logits(), temperature, top_k, top_p, rng)
        if token in stops:
            return
        yield token
        llm.eval_tokens([token])
