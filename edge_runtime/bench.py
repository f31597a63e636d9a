"""Measuring a bundle on the device that runs it: `moss-edge bench`, and the building blocks
of benchmarks/bench_4b.py.

- Encoder: milliseconds per full 4 s chunk (400 mel frames), one chunk per run as live
  streaming encodes it. Several encoders are timed in interleaved rounds, so background load
  hits them alike.
- LLM: prefill and decode tokens/s on one context, driven two ways in alternation: by this
  runtime (`LlamaModel.eval_tokens` for the prompt, then `generate`, the loop behind
  transcribe, ask and stream) and by llama.cpp's own loop (`llama_batch_get_one` and its greedy
  sampler, as llama.cpp's `simple` example). The time ratio is the runtime's overhead. Random
  weights never emit the stop token, so both decode a fixed number of tokens, stop ids ignored.
- Limits: read bandwidth (a GEMV streams an fp32 matrix once, as decoding streams the weights)
  and fp32 GEMM throughput, best of several runs, measured in a child process so that BLAS
  gets the asked thread count and the buffers stay out of this process's peak memory. A
  decoded token reads every weight but the token embedding table, plus the KV cache so far; a
  prefilled token costs 2 FLOPs per matrix weight (the output matrix runs only for the last
  token) plus attention.
- End to end: transcription of a clip with sentence timestamps and a fixed decode budget per
  window; real-time factor and the process's peak resident memory.

Every rate is the median of `runs` runs.
"""
from __future__ import annotations

import ctypes
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import llama_cpp as C
import numpy as np

from .bundle import BundleError
from .encoder import AudioEncoder
from .features import SAMPLE_RATE
from .llm import LlamaModel, generate
from .transcribe import MossAudio
from .windows import plan_windows

RUNS = 3
# Benchmark sizes: a 30 s window's prompt is ~510 tokens (375 audio rows, 15 time markers,
# the chat frame and the sentence-timestamp instruction).
PREFILL_TOKENS = 512
DECODE_TOKENS = 64
# `moss-edge bench`: short enough for a Raspberry Pi with a 4B bundle.
QUICK_PREFILL_TOKENS = 128
QUICK_DECODE_TOKENS = 32
BANDWIDTH_BYTES = 2**30
GEMM_SIZE = 2048
# Decode budget per second of audio in end-to-end runs, standing in for a real model's stop
# token: sentence-timestamped English (~2.5 words/s, a 7-token [ss.cc] stamp on each side of
# a sentence every few seconds). benchmarks/bench_4b.py reports its clip's exact figure.
TRANSCRIPT_TOKENS_PER_SECOND = 6.5

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


def machine_name() -> str:
    """Architecture, CPU model, cores and memory: the line a result names its machine by."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {model}, {os.cpu_count()} cores, {memory:.0f} GiB, CPU only"


def peak_rss_bytes() -> int:
    """This process's high-water resident memory."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except OSError:  # no /proc (macOS): ru_maxrss, in bytes there
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# --- encoder ---------------------------------------------------------------------------------

def encoder_ms_per_chunk(encoders: dict[str, AudioEncoder], runs: int = RUNS) -> dict[str, float]:
    """Median milliseconds per full chunk for each encoder, timed in interleaved rounds."""
    audio = next(iter(encoders.values())).audio
    mel = np.random.default_rng(0).standard_normal((1, audio.n_mels, audio.chunk_frames)).astype(np.float32)
    lengths = np.array([audio.chunk_frames], dtype=np.int64)
    for encoder in encoders.values():
        encoder.encode_chunks(mel, lengths)  # warm-up: first-run allocations and kernel choice
    times: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(runs):
        for name, encoder in encoders.items():
            started = time.perf_counter()
            encoder.encode_chunks(mel, lengths)
            times[name].append(time.perf_counter() - started)
    return {name: round(1000 * statistics.median(t), 1) for name, t in times.items()}


# --- LLM -------------------------------------------------------------------------------------

def synthetic_prompt(n: int, seed: int = 0) -> list[int]:
    """Ordinary text token ids (the special and audio ids lie above 151642)."""
    return [int(t) for t in np.random.default_rng(seed).integers(1000, 100000, n)]


def runtime_pass(llm: LlamaModel, prompt: Sequence[int], n_decode: int) -> tuple[float, float]:
    """(prefill s, decode s) through this runtime's code path."""
    llm.reset()
    started = time.perf_counter()
    llm.eval_tokens(prompt)
    prefilled = time.perf_counter()
    for _ in generate(llm, n_decode, stop_ids=()):
        pass
    return prefilled - started, time.perf_counter() - prefilled


def llama_cpp_pass(llm: LlamaModel, prompt: Sequence[int], n_decode: int) -> tuple[float, float]:
    """(prefill s, decode s) for the same work through llama.cpp's own loop, on the same
    context: the prompt as one batch, then one token at a time, each chosen by llama.cpp's
    greedy sampler from its own logits buffer."""
    llm.reset()
    sampler = C.llama_sampler_init_greedy()
    try:
        tokens = (C.llama_token * len(prompt))(*prompt)
        started = time.perf_counter()
        _checked(C.llama_decode(llm.ctx, C.llama_batch_get_one(tokens, len(prompt))))
        prefilled = time.perf_counter()
        token = (C.llama_token * 1)()
        for _ in range(n_decode):
            token[0] = C.llama_sampler_sample(sampler, llm.ctx, -1)
            _checked(C.llama_decode(llm.ctx, C.llama_batch_get_one(token, 1)))
        return prefilled - started, time.perf_counter() - prefilled
    finally:
        C.llama_sampler_free(sampler)
        llm.reset()  # the runtime's position counter never saw these tokens


def _checked(status: int) -> None:
    if status != 0:
        raise RuntimeError(f"llama_decode failed with status {status}")


PASSES: dict[str, Callable[[LlamaModel, Sequence[int], int], tuple[float, float]]] = {
    "runtime": runtime_pass, "llama_cpp": llama_cpp_pass}


def llm_speed(llm: LlamaModel, prefill_tokens: int = PREFILL_TOKENS, decode_tokens: int = DECODE_TOKENS,
              runs: int = RUNS) -> dict:
    """Prefill and decode tokens/s of the runtime and of llama.cpp's own loop, and the
    overhead: runtime time / llama.cpp time (1.0 = none)."""
    if prefill_tokens > llm.n_batch or prefill_tokens + decode_tokens > llm.n_ctx:
        raise ValueError(f"{prefill_tokens} + {decode_tokens} tokens need n_batch >= {prefill_tokens} "
                         f"(have {llm.n_batch}) and n_ctx >= {prefill_tokens + decode_tokens} (have {llm.n_ctx})")
    prompt = synthetic_prompt(prefill_tokens)
    runtime_pass(llm, prompt[:16], 4)  # warm-up: thread pool and first-use allocations
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in PASSES}
    for run in range(runs):
        order = list(PASSES) if run % 2 == 0 else list(reversed(PASSES))  # neither always goes first
        for name in order:
            prefill_s, decode_s = PASSES[name](llm, prompt, decode_tokens)
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


# --- end to end ------------------------------------------------------------------------------

def transcribe_clip(model: MossAudio, samples: np.ndarray, tokens_per_second: float = TRANSCRIPT_TOKENS_PER_SECOND,
                    window_seconds: float = 30.0) -> dict:
    """Transcribe `samples` (16 kHz) with sentence timestamps; each window may decode
    `tokens_per_second` x (audio / windows) tokens, so the clip decodes about
    `tokens_per_second` x its length in all (random weights decode every one)."""
    audio_s = len(samples) / SAMPLE_RATE
    windows = len(plan_windows(samples, window_seconds))
    budget = max(1, math.ceil(tokens_per_second * audio_s / windows))
    started = time.perf_counter()
    segments, info = model.transcribe(samples, timestamps="sentence", window_seconds=window_seconds,
                                      max_new_tokens=budget)
    n_segments = sum(1 for _ in segments)
    wall_s = time.perf_counter() - started
    return {"audio_s": round(audio_s, 2), "windows": windows, "decode_budget_per_window": budget,
            "segments": n_segments, "wall_s": round(wall_s, 2), "rtf": round(wall_s / audio_s, 3),
            "timings_s": {k: round(v, 2) for k, v in info.timings.items()}}


def speechlike_signal(seconds: float, seed: int = 0) -> np.ndarray:
    """A stand-in clip when no audio is given: voiced syllables (a harmonic tone with a
    4 Hz envelope) in phrases of a few seconds, with pauses between them."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.3 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    syllables = np.clip(np.sin(2 * np.pi * 4 * t), 0, None)
    phrases = (t % 4.0) < 3.0
    signal = 0.2 * voice * syllables * phrases + 0.003 * rng.standard_normal(len(t))
    return signal.astype(np.float32)


def run_bench(model: MossAudio, samples: np.ndarray, threads: int, runs: int = RUNS,
              prefill_tokens: int = QUICK_PREFILL_TOKENS, decode_tokens: int = QUICK_DECODE_TOKENS,
              buffer_bytes: int = BANDWIDTH_BYTES) -> dict:
    """The short benchmark of one loaded bundle: what `moss-edge bench` prints."""
    machine = machine_limits(threads, buffer_bytes)
    llm = llm_speed(model.llm, prefill_tokens, decode_tokens, runs)
    costs = llm_costs(model.llm, model.bundle.llm_path, prefill_tokens, decode_tokens)
    m = model.manifest
    return {
        "bundle": str(model.bundle.directory), "encoder_type": m.encoder.dtype, "llm_type": m.llm.dtype,
        "threads": threads, "runs": runs, "machine": machine,
        "encoder_ms_per_chunk": encoder_ms_per_chunk({"encoder": model.encoder}, runs)["encoder"],
        "llm": llm, "llm_costs": costs, "llm_limits": llm_limits(costs, machine),
        "end_to_end": transcribe_clip(model, samples),
        "peak_rss_gib": round(peak_rss_bytes() / 2**30, 2),
    }


def format_bench(result: dict) -> str:
    """`run_bench`'s result as a few lines for people."""
    llm, limits, e2e, machine = result["llm"], result["llm_limits"], result["end_to_end"], result["machine"]
    rows = [("encoder", f"{result['encoder_ms_per_chunk']} ms per 4 s chunk ({result['encoder_type']})")]
    for phase in ("prefill", "decode"):
        rows.append((f"LLM {phase}", f"{llm['runtime'][f'{phase}_tok_s']} tok/s ({result['llm_type']}); "
                                     f"llama.cpp's own loop {llm['llama_cpp'][f'{phase}_tok_s']} tok/s, "
                                     f"overhead x{llm['overhead'][phase]}; limit {limits[f'{phase}_tok_s']} tok/s"))
    rows += [("end to end", f"RTF {e2e['rtf']} on {e2e['audio_s']} s ({e2e['windows']} window(s), "
                            f"<= {e2e['decode_budget_per_window']} tokens each, sentence timestamps)"),
             ("machine", f"{machine['bandwidth_gb_s']} GB/s read, {machine['matmul_gflop_s']} GFLOP/s fp32 "
                         f"GEMM, {result['threads']} threads"),
             ("peak memory", f"{result['peak_rss_gib']} GiB resident")]
    notes = [f"prefill {llm['prefill_tokens']} tokens, decode {llm['decode_tokens']} tokens (fixed), "
             f"medians of {result['runs']} runs"]
    width = max(len(name) for name, _ in rows)
    return "\n".join([f"{name:<{width}}  {text}" for name, text in rows] + notes)
