"""The LLM and the machine measured against their limits: the building blocks of
benchmarks/bench_4b.py (edge_runtime/measure.py is the runtime's own, thinner side).

- LLM: prefill and decode tokens/s on one context, driven two ways in alternation: by the
  runtime's engine (`measure.runtime_pass`: the loop behind transcribe, ask and stream) and by
  llama.cpp's own loop (`llama_batch_get_one` and its greedy sampler, as llama.cpp's `simple`
  example). The time ratio is the runtime's overhead. Random weights never emit the stop
  token, so both decode a fixed number of tokens, stop ids ignored.
- Limits: read bandwidth (a GEMV streams an fp32 matrix once, as decoding streams the weights)
  and fp32 GEMM throughput, best of several runs, measured in a child process so that BLAS
  gets the asked thread count and the buffers stay out of this process's peak memory. A
  decoded token reads every weight but the token embedding table, plus the KV cache so far; a
  prefilled token costs 2 FLOPs per matrix weight (the output matrix runs only for the last
  token) plus attention.

Every rate is the median of `runs` runs.
"""
from __future__ import annotations

import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import llama_cpp as C

from edge_runtime.bundle import BundleError
from edge_runtime.engine import Engine
from edge_runtime.llm import LlamaModel, even_batches
from edge_runtime.measure import RUNS, runtime_pass, synthetic_prompt

# Benchmark sizes: a 30 s window's prompt is ~510 tokens (375 audio rows, 15 time markers,
# the chat frame and the sentence-timestamp instruction).
PREFILL_TOKENS = 512
DECODE_TOKENS = 64
BANDWIDTH_BYTES = 2**30
GEMM_SIZE = 2048

_PROBE = """
import json, sys, time
import numpy as np

def best(work, runs=5):
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)

buffer_bytes, gemm = int(sys.argv[1]), int(sys.argv[2])
matrix = np.ones((buffer_bytes // (4 * 4096), 4096), np.float32)  # written: every page resident
vector = np.ones(4096, np.float32)
read_s = best(lambda: matrix @ vector)
a = np.random.default_rng(0).standard_normal((gemm, gemm), dtype=np.float32)
gemm_s = best(lambda: a @ a)
print(json.dumps({"bandwidth_gb_s": round(matrix.nbytes / read_s / 1e9, 2),
                  "matmul_gflop_s": round(2 * gemm ** 3 / gemm_s / 1e9, 1)}))
"""


def machine_limits(threads: int, buffer_bytes: int = BANDWIDTH_BYTES) -> dict[str, float]:
    """Measured read bandwidth (GB/s) and fp32 matrix throughput (GFLOP/s) with `threads`."""
    env = os.environ | {var: str(threads) for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                      "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")}
    result = subprocess.run([sys.executable, "-c", _PROBE, str(buffer_bytes), str(GEMM_SIZE)], env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the bandwidth/throughput probe failed:\n{result.stderr}")
    return {"threads": threads, "buffer_mib": buffer_bytes // 2**20, **json.loads(result.stdout)}


# --- LLM -------------------------------------------------------------------------------------

def llama_cpp_pass(engine: Engine, prompt: Sequence[int], n_decode: int) -> tuple[float, float]:
    """(prefill s, decode s) for the same work through llama.cpp's own loop, on the same
    context: the prompt in the runtime's batches, then one token at a time, each chosen by
    llama.cpp's greedy sampler from its own logits buffer."""
    engine.start()  # take the context from the runtime's side, cleared
    llm = engine._llm  # the comparison needs llama.cpp's raw context, below the engine
    sampler = C.llama_sampler_init_greedy()
    try:
        batches = [(C.llama_token * (hi - lo))(*prompt[lo:hi]) for lo, hi in even_batches(len(prompt), llm.n_batch)]
        started = time.perf_counter()
        for tokens in batches:
            _checked(C.llama_decode(llm.ctx, C.llama_batch_get_one(tokens, len(tokens))))
        prefilled = time.perf_counter()
        token = (C.llama_token * 1)()
        for _ in range(n_decode):
            token[0] = C.llama_sampler_sample(sampler, llm.ctx, -1)
            _checked(C.llama_decode(llm.ctx, C.llama_batch_get_one(token, 1)))
        return prefilled - started, time.perf_counter() - prefilled
    finally:
        C.llama_sampler_free(sampler)
        engine.start()  # the runtime's position counter never saw these tokens


def _checked(status: int) -> None:
    if status != 0:
        raise RuntimeError(f"llama_decode failed with status {status}")


PASSES: dict[str, Callable[[Engine, Sequence[int], int], tuple[float, float]]] = {
    "runtime": runtime_pass, "llama_cpp": llama_cpp_pass}


def llm_speed(engine: Engine, prefill_tokens: int = PREFILL_TOKENS, decode_tokens: int = DECODE_TOKENS,
              runs: int = RUNS) -> dict:
    """Prefill and decode tokens/s of the runtime and of llama.cpp's own loop, and the
    overhead: runtime time / llama.cpp time (1.0 = none)."""
    llm = engine._llm
    if prefill_tokens + decode_tokens > llm.n_ctx:
        raise ValueError(f"{prefill_tokens} + {decode_tokens} tokens need n_ctx >= "
                         f"{prefill_tokens + decode_tokens} (have {llm.n_ctx})")
    prompt = synthetic_prompt(prefill_tokens)
    runtime_pass(engine, prompt[:16], 4)  # warm-up: thread pool and first-use allocations
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in PASSES}
    for run in range(runs):
        order = list(PASSES) if run % 2 == 0 else list(reversed(PASSES))  # neither always goes first
        for name in order:
            prefill_s, decode_s = PASSES[name](engine, prompt, decode_tokens)
            times[name][0].append(prefill_s)
            times[name][1].append(decode_s)
    rates = {name: {"prefill_tok_s": prefill_tokens / statistics.median(p),
                     "decode_tok_s": decode_tokens / statistics.median(d)} for name, (p, d) in times.items()}
    return {"prefill_tokens": prefill_tokens, "decode_tokens": decode_tokens, "runs": runs,
            **{name: {k: round(v, 2) for k, v in r.items()} for name, r in rates.items()},
            "overhead": {phase: round(rates["llama_cpp"][f"{phase}_tok_s"] / rates["runtime"][f"{phase}_tok_s"], 3)
                         for phase in ("prefill", "decode")}}


class _GgufInitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


def gguf_tensor_bytes(path: Path, name: str) -> int:
    """A tensor's size in a GGUF file (0 if absent), from ggml's own GGUF reader: the same
    library llama.cpp loads the file with; only the header is read."""
    from llama_cpp._ggml import libggml as ggml  # llama-cpp-python's ggml handle (version pinned)

    ggml.gguf_init_from_file.restype = ctypes.c_void_p
    ggml.gguf_init_from_file.argtypes = [ctypes.c_char_p, _GgufInitParams]
    ggml.gguf_find_tensor.restype = ctypes.c_int64
    ggml.gguf_find_tensor.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    ggml.gguf_get_tensor_size.restype = ctypes.c_size_t
    ggml.gguf_get_tensor_size.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    ggml.gguf_free.argtypes = [ctypes.c_void_p]
    gguf = ggml.gguf_init_from_file(str(path).encode(), _GgufInitParams(True, None))
    if not gguf:
        raise BundleError(f"{path}: ggml cannot read this GGUF header")
    try:
        index = ggml.gguf_find_tensor(gguf, name.encode())
        return int(ggml.gguf_get_tensor_size(gguf, index)) if index >= 0 else 0
    finally:
        ggml.gguf_free(gguf)


def llm_costs(llm: LlamaModel, gguf: Path, prefill_tokens: int, decode_tokens: int,
              kv_bytes_per_value: float = 2.0) -> dict[str, float]:
    """Bytes read per decoded token and FLOPs per prefilled token, at the mean context of
    each phase (KV cache f16 by default, as the runtime's)."""
    arch = llm.metadata("general.architecture")
    n_layer, n_head = C.llama_model_n_layer(llm.model), C.llama_model_n_head(llm.model)
    n_head_kv = C.llama_model_n_head_kv(llm.model)
    head_dim = int(llm.metadata(f"{arch}.attention.key_length") or llm.n_embd // n_head)
    embedding = gguf_tensor_bytes(gguf, "token_embd.weight")
    tied = gguf_tensor_bytes(gguf, "output.weight") == 0  # then the table is also the output matrix
    weights_read = C.llama_model_size(llm.model) - (0 if tied else embedding)
    matrix_weights = C.llama_model_n_params(llm.model) - (1 if tied else 2) * llm.n_vocab * llm.n_embd
    kv_per_position = 2 * n_layer * n_head_kv * head_dim * kv_bytes_per_value
    attention_per_position = 4 * n_layer * n_head * head_dim  # q.k and p.v, 2 FLOPs per MAC
    return {"weight_bytes_read": weights_read,
            "decode_bytes_per_token": weights_read + kv_per_position * (prefill_tokens + decode_tokens / 2),
            "prefill_flops_per_token": 2 * matrix_weights + attention_per_position * prefill_tokens / 2}


def llm_limits(costs: dict[str, float], machine: dict[str, float]) -> dict[str, float]:
    """Tokens/s that the measured bandwidth (decode) and matrix throughput (prefill) allow."""
    return {"decode_tok_s": round(machine["bandwidth_gb_s"] * 1e9 / costs["decode_bytes_per_token"], 2),
            "prefill_tok_s": round(machine["matmul_gflop_s"] * 1e9 / costs["prefill_flops_per_token"], 2)}
