"""The GGUF LLM through llama.cpp's own quantizer (llama_model_quantize).

llama.cpp's presets decide every tensor's type, token embeddings and output included (e.g.
Q4_K_M keeps some attn_v / ffn_down at Q6_K). A k-quant needs rows that are a multiple of
256 values; narrower tensors fall back to another type, so the types that actually resulted
are read back from the file and recorded.
"""
from __future__ import annotations

import ctypes
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import gguf
import llama_cpp as C

from edge_runtime.errors import InputError
from edge_runtime.llm import check_gguf_header, llama_log_to

LLAMA_FTYPES = {
    "F16": C.LLAMA_FTYPE_MOSTLY_F16,
    "Q8_0": C.LLAMA_FTYPE_MOSTLY_Q8_0,
    "Q6_K": C.LLAMA_FTYPE_MOSTLY_Q6_K,
    "Q5_K_M": C.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "Q4_K_M": C.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "Q4_0": C.LLAMA_FTYPE_MOSTLY_Q4_0,
}
# `--token-embedding-type`, as llama-quantize's option of that name: with tied embeddings
# the presets keep the embedding at output precision, which dominates a tiny model's size.
EMBEDDING_TYPES = ("F16", "Q8_0", "Q5_1", "Q5_0", "Q4_0")
SOURCE_TYPES = ("F32", "F16", "BF16")  # llama.cpp quantizes from float only
_TENSOR_LINE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]")  # "[  12/ 399] blk.0.attn_q.weight - ..."


def tensor_types(path: Path) -> dict[str, Any]:
    """What a GGUF holds: tensors per type, the embedding and output types, bits per weight."""
    reader = gguf.GGUFReader(str(path))
    by_name = {t.name: t for t in reader.tensors}
    counts = Counter(t.tensor_type.name for t in reader.tensors)
    weights = sum(int(t.n_elements) for t in reader.tensors)
    data_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    return {"tensor_types": dict(sorted(counts.items())),
            "token_embd": by_name["token_embd.weight"].tensor_type.name,
            # tied embeddings (the nano model): the output layer is the token embedding
            "output": by_name.get("output.weight", by_name["token_embd.weight"]).tensor_type.name,
            "bits_per_weight": round(8 * data_bytes / weights, 3)}


def quantize_gguf(source: Path, out: Path, llm_type: str, threads: int | None = None,
                  count: Callable[[int, int], None] | None = None,
                  embedding_type: str | None = None) -> dict[str, Any]:
    """Write `source` (an F32/F16/BF16 GGUF) as `out` at `llm_type`; returns its tensor types.
    `count(done, total)` follows the tensors as llama.cpp writes them."""
    if llm_type not in LLAMA_FTYPES:
        raise InputError(f"LLM type {llm_type!r} not one of {', '.join(LLAMA_FTYPES)}")
    check_gguf_header(source)
    params = C.llama_model_quantize_default_params()
    params.ftype = LLAMA_FTYPES[llm_type]
    params.nthread = threads or 0  # 0: every core
    if embedding_type is not None:
        if embedding_type not in EMBEDDING_TYPES:
            raise InputError(f"token embedding type {embedding_type!r} not one of {', '.join(EMBEDDING_TYPES)}")
        params.token_embedding_type = int(gguf.GGMLQuantizationType[embedding_type])

    def on_log(text: str) -> None:
        if os.environ.get("MOSS_EDGE_LLAMA_LOG"):
            sys.stderr.write(text)
        match = _TENSOR_LINE.match(text)
        if match and count:
            count(int(match.group(1)), int(match.group(2)))

    with llama_log_to(on_log):
        status = C.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if status != 0:
        raise RuntimeError(f"{source}: llama.cpp could not quantize this GGUF to {llm_type} "
                           f"(status {status}); set MOSS_EDGE_LLAMA_LOG=1 for details")
    return {"ftype": llm_type, **tensor_types(out)}
