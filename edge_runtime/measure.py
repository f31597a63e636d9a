"""What `moss-edge bench` measures on the device that runs a bundle, through the engine:
encoder milliseconds per 4 s chunk, LLM prefill and decode tokens/s, and the real-time factor
and peak memory of a transcription. The comparisons with llama.cpp's own loop and with the
machine's limits are benchmarks/llm_bench.py's.

Every rate is the median of `runs` runs. Random-weight bundles never emit a stop token, so
decode lengths are fixed.
"""
from __future__ import annotations

import math
import resource
import statistics
import time
from typing import Sequence as Ids

import numpy as np

from .encoder import AudioEncoder
from .engine import Engine
from .features import SAMPLE_RATE
from .transcribe import MossAudio
from .windows import plan_windows

RUNS = 3
# `moss-edge bench`: short enough for a Raspberry Pi with a 4B bundle.
QUICK_PREFILL_TOKENS = 128
QUICK_DECODE_TOKENS = 32
# Decode budget per second of audio in end-to-end runs, standing in for a real model's stop
# token: sentence-timestamped English (~2.5 words/s, a 7-token [ss.cc] stamp on each side of
# a sentence every few seconds). benchmarks/bench_4b.py measures its clip's exact figure.
TRANSCRIPT_TOKENS_PER_SECOND = 6.5


def peak_rss_bytes() -> int:
    """This process's high-water resident memory."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except OSError:  # no /proc (macOS): ru_maxrss, in bytes there
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def encoder_ms_per_chunk(encoders: dict[str, AudioEncoder], runs: int = RUNS) -> dict[str, float]:
    """Median milliseconds per full chunk for each encoder, timed in interleaved rounds so that
    background load hits them alike; one chunk per run, as live streaming encodes it."""
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


def synthetic_prompt(n: int, seed: int = 0) -> list[int]:
    """Ordinary text token ids (the special and audio ids lie above 151642)."""
    return [int(t) for t in np.random.default_rng(seed).integers(1000, 100000, n)]


def runtime_pass(engine: Engine, prompt: Ids[int], n_decode: int) -> tuple[float, float]:
    """(prefill s, decode s) of `prompt` and `n_decode` greedy tokens through the engine, the
    path behind transcribe, ask and stream."""
    sequence = engine.start(room=len(prompt) + n_decode)
    started = time.perf_counter()
    sequence.eval_tokens(prompt)
    prefilled = time.perf_counter()
    for _ in sequence.decode(n_decode, stop_ids=()):
        pass
    return prefilled - started, time.perf_counter() - prefilled


def llm_rates(engine: Engine, prefill_tokens: int, decode_tokens: int, runs: int = RUNS) -> dict[str, float]:
    """Median prefill and decode tokens/s through the engine."""
    if prefill_tokens + decode_tokens > engine.max_context:
        raise ValueError(f"{prefill_tokens} + {decode_tokens} tokens need n_ctx >= "
                         f"{prefill_tokens + decode_tokens} (have {engine.max_context})")
    prompt = synthetic_prompt(prefill_tokens)
    runtime_pass(engine, prompt[:16], 4)  # warm-up: thread pool and first-use allocations
    passes = [runtime_pass(engine, prompt, decode_tokens) for _ in range(runs)]
    return {"prefill_tok_s": round(prefill_tokens / statistics.median(p for p, _ in passes), 2),
            "decode_tok_s": round(decode_tokens / statistics.median(d for _, d in passes), 2)}


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
                                      max_tokens=budget)
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
              prefill_tokens: int = QUICK_PREFILL_TOKENS, decode_tokens: int = QUICK_DECODE_TOKENS) -> dict:
    """The short benchmark of one loaded bundle: what `moss-edge bench` prints."""
    m = model.manifest
    return {
        "bundle": str(model.bundle.directory), "encoder_type": m.encoder.dtype, "llm_type": m.llm.dtype,
        "threads": threads, "runs": runs,
        "encoder_ms_per_chunk": encoder_ms_per_chunk({"encoder": model.engine.encoder}, runs)["encoder"],
        "llm": {"prefill_tokens": prefill_tokens, "decode_tokens": decode_tokens,
                **llm_rates(model.engine, prefill_tokens, decode_tokens, runs)},
        "end_to_end": transcribe_clip(model, samples),
        "peak_rss_gib": round(peak_rss_bytes() / 2**30, 2),
    }


def format_bench(result: dict) -> str:
    """`run_bench`'s result as a few lines for people."""
    llm, e2e = result["llm"], result["end_to_end"]
    rows = [("encoder", f"{result['encoder_ms_per_chunk']} ms per 4 s chunk ({result['encoder_type']})"),
            ("LLM prefill", f"{llm['prefill_tok_s']} tok/s ({result['llm_type']}, {llm['prefill_tokens']} tokens)"),
            ("LLM decode", f"{llm['decode_tok_s']} tok/s ({llm['decode_tokens']} tokens, a fixed length)"),
            ("end to end", f"RTF {e2e['rtf']} on {e2e['audio_s']} s ({e2e['windows']} window(s), "
                           f"<= {e2e['decode_budget_per_window']} tokens each, sentence timestamps)"),
            ("peak memory", f"{result['peak_rss_gib']} GiB resident")]
    width = max(len(name) for name, _ in rows)
    return "\n".join([f"{name:<{width}}  {text}" for name, text in rows]
                     + [f"{result['threads']} threads, medians of {result['runs']} runs; benchmarks/llm_bench.py "
                        "compares with llama.cpp's own loop and the machine's limits"])
