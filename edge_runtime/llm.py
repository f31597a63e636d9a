"""The GGUF LLM through llama.cpp's C API (llama-cpp-python's low-level bindings); only
engine.py drives it.

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
from .errors import InputError
from .gguf_file import MAGIC as GGUF_MAGIC, GGUFFormatError, read_tensor_directory

MROPE_SECTIONS = 4  # llama.cpp's qwen3vl position layout: 4 position values per embedding row
KV_CACHE_TYPES = {"f32": 0, "f16": 1, "q8_0": 8}  # ggml_type ids
# llama_flash_attn_type. On CPU, flash attention rounds Q and the softmax through f16, so the
# exact parity tests turn it off (docs/format.md#incremental-prefill).
FLASH_ATTENTION = {"auto": -1, "off": 0, "on": 1}
# Most logits rows one batch asks llama.cpp for: its logits buffer (n_vocab floats a row, 0.6 MB
# at Qwen3's vocabulary) grows to the largest such batch and stays that size.
OUTPUT_ROWS = 32
# Most positions one llama.cpp batch (and micro-batch) takes. llama.cpp sizes its compute
# buffer for this many rows, and a packed prompt fills it: 256 rather than llama.cpp's 512
# halves that buffer, and on a CPU a prefill is no slower for it (docs/format.md#batch-size).
N_BATCH = 256
CONTEXT_STEP = 256  # an automatic context grows in steps of this many tokens
TOKEN_EMBEDDING = "token_embd.weight"
GGML_TYPE_F32 = 0


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


class _GgmlTypeTraits(ctypes.Structure):
    """ggml.h's struct ggml_type_traits."""
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p), ("from_float_ref", ctypes.c_void_p)]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)


def _ggml_type_traits(ggml_type: int) -> _GgmlTypeTraits:
    from llama_cpp._ggml import libggml as ggml  # resolves libggml-base's symbols too

    ggml.ggml_get_type_traits.argtypes = [ctypes.c_int]
    ggml.ggml_get_type_traits.restype = ctypes.POINTER(_GgmlTypeTraits)
    return ggml.ggml_get_type_traits(ggml_type).contents


class TokenEmbedding:
    """The GGUF's token embedding rows exactly as llama.cpp looks them up for a token batch:
    the file's bytes turned to floats by ggml's own conversion for their type (docs/format.md#packed-prefill)."""

    def __init__(self, path: Path, n_vocab: int, n_embd: int):
        info = read_tensor_directory(path).get(TOKEN_EMBEDDING)
        if info is None or info.shape != (n_embd, n_vocab):
            raise GGUFFormatError(f"{path}: no {TOKEN_EMBEDDING} of {n_vocab} rows of {n_embd}")
        traits = _ggml_type_traits(info.ggml_type)
        if traits.blck_size <= 0 or n_embd % traits.blck_size or traits.type_size <= 0:
            raise GGUFFormatError(f"{path}: {TOKEN_EMBEDDING} has a type ({info.ggml_type}) this ggml does not describe")
        if info.ggml_type != GGML_TYPE_F32 and not traits.to_float:
            raise GGUFFormatError(f"{path}: ggml has no conversion to floats for {traits.type_name!r}")
        self.path, self.offset, self.row_bytes = path, info.offset, n_embd // traits.blck_size * traits.type_size
        if path.stat().st_size < self.offset + n_vocab * self.row_bytes:
            raise GGUFFormatError(f"{path}: the file ends inside {TOKEN_EMBEDDING} (truncated)")
        self._to_float = None if info.ggml_type == GGML_TYPE_F32 else _TO_FLOAT(traits.to_float)
        self.n_embd = n_embd
        self._cache: dict[int, np.ndarray] = {}  # a prompt uses few distinct tokens: digits, the chat frame

    def row(self, token: int) -> np.ndarray:
        if token not in self._cache:
            with self.path.open("rb") as f:  # read, not mapped: the GGUF stays unmapped on the CPU
                f.seek(self.offset + token * self.row_bytes)
                raw = np.frombuffer(f.read(self.row_bytes), dtype=np.uint8)
            if self._to_float is None:
                values = raw.view(np.float32).copy()
            else:
                values = np.empty(self.n_embd, dtype=np.float32)
                self._to_float(raw.ctypes.data, values.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), self.n_embd)
            self._cache[token] = values
        return self._cache[token]


def mrope_positions(start: int, n: int) -> np.ndarray:
    """Positions of an embedding batch on an M-RoPE model: section-major `pos[j*n + i]`,
    sections 0..2 the absolute position, section 3 zero (docs/format.md#llama-cpp-positions)."""
    absolute = np.arange(start, start + n, dtype=np.int32)
    return np.concatenate([absolute, absolute, absolute, np.zeros(n, dtype=np.int32)])


class _Batch:
    """A llama_batch over numpy arrays we own: llama_batch_init would allocate only
    n_tokens positions, too few for an M-RoPE embedding batch. Row i belongs to sequence
    `seqs[i]`; `outputs` marks the rows whose logits llama.cpp keeps."""

    def __init__(self, positions: np.ndarray, seqs: np.ndarray, outputs: np.ndarray,
                 tokens: np.ndarray | None = None, embeddings: np.ndarray | None = None):
        n = len(seqs)
        self._positions = np.ascontiguousarray(positions, dtype=np.int32)
        self._n_seq = np.ones(n, dtype=np.int32)
        self._seqs = np.ascontiguousarray(seqs, dtype=np.int32)
        row = ctypes.sizeof(C.llama_seq_id)
        self._seq_ptrs = (ctypes.POINTER(C.llama_seq_id) * n)(
            *[ctypes.cast(self._seqs.ctypes.data + i * row, ctypes.POINTER(C.llama_seq_id)) for i in range(n)])
        self._outputs = np.ascontiguousarray(outputs, dtype=np.int8)
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
        self.struct.logits = self._outputs.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))


def even_batches(n: int, limit: int) -> list[tuple[int, int]]:
    """(lo, hi) of the fewest batches of at most `limit` positions that cover `n`, as even as
    can be: every batch costs at least one pass over the weights, so 260 rows go as 130 + 130,
    not 256 + 4 (a 4-row batch costs about what a decoded token does)."""
    count = -(-n // limit)
    bounds = [n * i // count for i in range(count + 1)] if count else [0]
    return list(zip(bounds, bounds[1:]))


def _last_only(n: int) -> np.ndarray:
    outputs = np.zeros(n, dtype=np.int8)
    outputs[-1] = 1
    return outputs


def _token_batch(tokens: Sequence[int], lo: int, hi: int, start: int, seq: int, every: bool) -> _Batch:
    """tokens[lo:hi] of sequence `seq` at positions start+lo..; the logits of every row or the last."""
    outputs = np.ones(hi - lo, dtype=np.int8) if every else _last_only(hi - lo)
    return _Batch(np.arange(start + lo, start + hi), np.full(hi - lo, seq), outputs,
                  tokens=np.asarray(tokens[lo:hi], dtype=np.int32))


def check_gguf_header(path: Path) -> None:
    if not path.is_file():
        raise BundleError(f"{path}: GGUF file not found")
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise BundleError(f"{path}: not a GGUF file (bad magic)")


class LlamaModel:
    """A loaded GGUF and one context: a KV cache that holds up to `n_seq` sequences, each
    evaluated at positions its caller counts (engine.Sequence).

    `n_ctx=None` sizes the context to what calls ask for (`reserve`): it is made when first
    needed and made again, larger, when a call needs more, never more than the model was
    trained for. Its KV cache is most of the memory beyond the weights (at 4B, f16: 144 KiB
    a token, 1.2 GB for 8192 tokens), so a 30 s window gets about 1 000 tokens, not 8192.
    A number fixes the context at that size."""

    def __init__(self, path: Path, n_ctx: int | None = None, n_batch: int | None = None,
                 threads: int | None = None, gpu_layers: int = 0, kv_type: str = "f16",
                 flash_attention: str = "auto", n_seq: int = 1):
        if kv_type not in KV_CACHE_TYPES:
            raise InputError(f"KV cache type {kv_type!r} not one of {sorted(KV_CACHE_TYPES)}")
        if flash_attention not in FLASH_ATTENTION:
            raise InputError(f"flash attention {flash_attention!r} not one of {sorted(FLASH_ATTENTION)}")
        if n_batch is not None and n_batch < 1:
            raise InputError(f"batch size {n_batch}: at least one position")
        _init_backend()
        check_gguf_header(path)
        self.path = path
        model_params = C.llama_model_default_params()
        model_params.n_gpu_layers = gpu_layers
        model_params.use_extra_bufts = _cpu_extra_layouts_usable()
        if gpu_layers == 0 and model_params.use_extra_bufts:
            # Read, not mapped: each weight llama.cpp repacks for the CPU would otherwise stay
            # resident twice, as mapped file pages and as the repacked copy (4B int4 GGUF
            # alone: 4.24 GiB RSS mapped, 2.63 GiB read; docs/devices.md#memory)
            model_params.load_mode = C.LLAMA_LOAD_MODE_NONE
        self.model = C.llama_model_load_from_file(str(path).encode(), model_params)
        if not self.model:
            raise BundleError(f"{path}: llama.cpp could not load this GGUF (corrupt or truncated, "
                              "or an architecture this llama.cpp lacks); set MOSS_EDGE_LLAMA_LOG=1 for details")
        self.vocab = C.llama_model_get_vocab(self.model)
        self.n_vocab = C.llama_vocab_n_tokens(self.vocab)
        self.n_embd = C.llama_model_n_embd(self.model)
        self.n_embd_inp = C.llama_model_n_embd_inp(self.model)
        self.n_ctx_train = C.llama_model_n_ctx_train(self.model)
        threads = threads or os.cpu_count() or 1
        self._ctx_params = ctx_params = C.llama_context_default_params()
        n_batch = n_batch or N_BATCH
        ctx_params.n_batch = ctx_params.n_ubatch = n_batch
        ctx_params.n_threads = threads
        ctx_params.n_threads_batch = threads
        ctx_params.no_perf = True
        ctx_params.n_seq_max = n_seq
        ctx_params.kv_unified = True  # the sequences share all n_ctx cells, whatever their lengths
        ctx_params.type_k = ctx_params.type_v = KV_CACHE_TYPES[kv_type]
        ctx_params.flash_attn_type = FLASH_ATTENTION[flash_attention]
        self.ctx = None
        self.n_ctx = 0  # tokens the context holds now
        self.fixed_ctx = n_ctx is not None
        self.n_batch = n_batch
        self.n_seq = n_seq
        self._token_embedding: TokenEmbedding | None | bool = None  # False: not readable here
        if n_ctx is not None:
            self._make_context(n_ctx)

    def reserve(self, n_tokens: int) -> None:
        """Make the context hold `n_tokens` (all sequences together). An automatic context
        is made anew, rounded up to CONTEXT_STEP, which empties it: call before evaluating."""
        if n_tokens <= self.n_ctx:
            return
        if self.fixed_ctx:
            raise InputError(f"{n_tokens} tokens of context needed; the context holds {self.n_ctx} "
                             "(n_ctx): use shorter audio, fewer output tokens or parallel sequences, "
                             "or a larger n_ctx")
        if n_tokens > self.n_ctx_train:
            raise InputError(f"{n_tokens} tokens of context needed; the model was trained for "
                             f"{self.n_ctx_train}: use shorter audio or fewer output tokens")
        self._make_context(min(self.n_ctx_train, -(-n_tokens // CONTEXT_STEP) * CONTEXT_STEP))

    def _make_context(self, n_ctx: int) -> None:
        if self.ctx:
            C.llama_free(self.ctx)
            self.ctx, self.n_ctx = None, 0
        self._ctx_params.n_ctx = n_ctx
        self.ctx = C.llama_init_from_model(self.model, self._ctx_params)
        if not self.ctx:
            raise BundleError(f"{self.path}: llama.cpp could not create a context of {n_ctx} tokens")
        self.n_ctx = C.llama_n_ctx(self.ctx)

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

    def token_rows(self, tokens: Sequence[int]) -> np.ndarray | None:
        """Tokens as embedding rows [n, n_embd_inp]: the token's embedding, then zeros where an
        audio row has its DeepStack slices (a token batch adds none). Evaluated as embeddings they
        give what the tokens give as a token batch. None where the GGUF's embedding cannot be read
        here; callers then feed token batches."""
        if self._token_embedding is None:
            try:
                self._token_embedding = TokenEmbedding(self.path, self.n_vocab, self.n_embd)
            except (GGUFFormatError, OSError, AttributeError):
                self._token_embedding = False
        if self._token_embedding is False:
            return None
        rows = np.zeros((len(tokens), self.n_embd_inp), dtype=np.float32)
        for i, token in enumerate(tokens):
            rows[i, :self.n_embd] = self._token_embedding.row(token)
        return rows

    # --- evaluation ----------------------------------------------------------------------

    def _decode(self, batch: _Batch, outputs: int) -> np.ndarray:
        """Run a batch; the logits of its `outputs` marked rows, [outputs, n_vocab]."""
        status = C.llama_decode(self.ctx, batch.struct)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}"
                               + (" (no room left in the KV cache)" if status == 1 else ""))
        pointer = C.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(pointer, shape=(outputs, self.n_vocab)).copy()

    def _check_room(self, end: int) -> None:
        if end > self.n_ctx:
            raise InputError(f"{end} tokens exceed the context of {self.n_ctx}"
                             + ("" if self.fixed_ctx else " reserved for this call"))

    def eval_tokens(self, tokens: Sequence[int], start: int, seq: int = 0,
                    logits_from: int | None = None) -> np.ndarray:
        """Token batches at positions `start`.. of sequence `seq`, one position per token
        (llama.cpp expands them for M-RoPE). The logits after the last token [n_vocab], or
        with `logits_from` after each of tokens[logits_from:] [n - logits_from, n_vocab]
        (draft verification, teacher forcing). Those come OUTPUT_ROWS at a time: llama.cpp's
        logits buffer grows to the most rows one batch returns (150k floats each at Qwen3)."""
        self._check_room(start + len(tokens))
        split = len(tokens) if logits_from is None else logits_from
        last: np.ndarray | None = None
        rows: list[np.ndarray] = []
        for lo, hi in even_batches(split, self.n_batch):  # positions whose logits are not wanted
            last = self._decode(_token_batch(tokens, lo, hi, start, seq, every=False), 1)[-1]
        for lo in range(split, len(tokens), OUTPUT_ROWS):
            hi = min(len(tokens), lo + OUTPUT_ROWS)
            rows.append(self._decode(_token_batch(tokens, lo, hi, start, seq, every=True), hi - lo))
        return last if logits_from is None else np.concatenate(rows)

    def eval_embeddings(self, rows: np.ndarray, start: int, seq: int = 0) -> np.ndarray:
        """Embedding batches of audio rows [n, n_embd_inp] at positions `start`..; the logits
        after the last row."""
        if rows.ndim != 2 or rows.shape[1] != self.n_embd_inp:
            raise ValueError(f"audio rows of shape {rows.shape}, the LLM takes rows of {self.n_embd_inp}")
        self._check_room(start + len(rows))
        for lo, hi in even_batches(len(rows), self.n_batch):
            part = rows[lo:hi]
            logits = self._decode(_Batch(mrope_positions(start + lo, len(part)), np.full(len(part), seq),
                                         _last_only(len(part)), embeddings=part), 1)
        return logits[-1]

    def eval_step(self, tokens: Sequence[int], positions: Sequence[int], seqs: Sequence[int]) -> np.ndarray:
        """One token for each of several sequences in one batch; their logits [k, n_vocab]."""
        self._check_room(max(positions) + 1)
        n = len(tokens)
        return self._decode(_Batch(np.asarray(positions), np.asarray(seqs), np.ones(n, dtype=np.int8),
                                   tokens=np.asarray(tokens)), n)

    def remove(self, seq: int, start: int) -> None:
        """Forget sequence `seq`'s positions from `start` on."""
        C.llama_memory_seq_rm(C.llama_get_memory(self.ctx), seq, start, -1)

    def seq_state(self, seq: int) -> bytes:
        """Sequence `seq`'s KV cells (keys, values, positions), as llama.cpp's state API copies them."""
        size = C.llama_state_seq_get_size(self.ctx, seq)
        buffer = (ctypes.c_uint8 * size)()
        written = C.llama_state_seq_get_data(self.ctx, buffer, size, seq)
        if written != size:
            raise RuntimeError(f"llama.cpp copied {written} of {size} bytes of sequence {seq}'s state")
        return bytes(buffer)

    def load_seq_state(self, seq: int, state: bytes) -> None:
        """Put a `seq_state` copy back as sequence `seq` (its cells must be empty)."""
        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if C.llama_state_seq_set_data(self.ctx, buffer, len(state), seq) != len(state):
            raise RuntimeError(f"llama.cpp could not restore {len(state)} bytes of sequence state "
                               "(no room in the context?)")

    def clear(self) -> None:
        if self.ctx:
            C.llama_memory_clear(C.llama_get_memory(self.ctx), True)
