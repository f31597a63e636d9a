"""What a quantized bundle costs against the float bundle it came from, measured.

- Encoder: the LLM-ready rows of both bundles on the same signals (espeak-ng speech, noise,
  a synthetic music-like clip): per-row cosine similarity and relative (Frobenius) error.
- LLM: teacher forcing. The reference bundle prefills the real prompt with audio and writes
  `n` greedy tokens; then both LLMs are fed that same prompt and continuation and their
  next-token distributions are compared position by position (top-1 agreement, KL(ref||q)),
  and each model's own greedy tokens are compared (shared prefix). `llm` feeds both LLMs the
  reference encoder's rows, isolating the LLM; `end_to_end` feeds each bundle its own rows.
- Peak resident memory of a fresh process that loads the bundle and answers a 4 s clip.

Both sides run with an f32 KV cache and flash attention off, so the figures measure the
weights alone and not the runtime's f16 rounding (which the parity tests bound separately).
"""
from __future__ import annotations

import gc
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge_runtime.audio import load_audio
from edge_runtime.bundle import Bundle
from edge_runtime.features import SAMPLE_RATE
from edge_runtime.prompt import TRANSCRIBE, Tokens, build_prompt
from edge_runtime.speech import SAMPLE_TEXT, speak
from edge_runtime.transcribe import MossAudio

SETTINGS = {"kv_type": "f32", "flash_attention": "off"}  # and CPU execution
N_CTX = 1024  # the longest probe (speech, ~21 s) needs about 400 positions
CONTINUATION_TOKENS = 32
DESCRIBE = "Describe the audio."
PROBE_SECONDS = 8.0
MEMORY_CLIP_SECONDS = 4.0


@dataclass(frozen=True)
class Probe:
    name: str
    samples: np.ndarray
    instruction: str | None  # None: encoder only; else also a teacher-forced LLM sequence
    origin: str


def music_like(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Harmonic notes on a pentatonic scale over a bass line, with a click on every beat."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    out = np.zeros_like(t)
    note_s = 0.25
    scale = 220.0 * 2 ** (np.array([0, 2, 4, 7, 9, 12, 14, 16]) / 12)
    for start in np.arange(0, seconds, note_s):
        f0, on = rng.choice(scale), (t >= start) & (t < start + 2 * note_s)
        age = t[on] - start
        envelope = np.minimum(age / 0.01, 1.0) * np.exp(-age / 0.2)
        out[on] += envelope * sum(np.sin(2 * np.pi * k * f0 * age) / k for k in range(1, 7))
        if start % 0.5 == 0:  # beat: a decaying noise burst
            click = age < 0.05
            out[np.flatnonzero(on)[click]] += 0.8 * rng.standard_normal(click.sum()) * np.exp(-age[click] / 0.01)
    out += 0.4 * np.sin(2 * np.pi * 55.0 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t))
    return (0.5 * out / np.abs(out).max()).astype(np.float32)


def probe_signals(seed: int = 0) -> list[Probe]:
    """The fixed inputs of every measurement. Speech needs espeak-ng; without it the report
    says so and measures the other signals."""
    rng = np.random.default_rng(seed)
    probes = []
    try:
        with tempfile.TemporaryDirectory() as scratch:
            speech = load_audio(speak(SAMPLE_TEXT, Path(scratch) / "speech.wav"))
        probes.append(Probe("speech", speech, TRANSCRIBE, "espeak-ng en-us, 150 wpm"))
    except RuntimeError:
        pass  # no espeak-ng: the report lists the signals it used
    n = int(PROBE_SECONDS * SAMPLE_RATE)
    probes.append(Probe("noise", (0.1 * rng.standard_normal(n)).astype(np.float32), None,
                        f"white Gaussian noise, rms 0.1, seed {seed}"))
    probes.append(Probe("music", music_like(PROBE_SECONDS, rng), DESCRIBE,
                        f"synthetic notes, bass and beat clicks, seed {seed}"))
    return probes


@dataclass(frozen=True)
class Trace:
    greedy: list[int]
    logits: np.ndarray  # [n, vocab]: teacher-forced next-token logits


def open_model(bundle: Bundle, threads: int | None) -> MossAudio:
    # CPU on both sides whatever the bundle's preset says: the same kernels, repeatable figures
    return MossAudio(bundle, device="cpu", threads=threads, n_ctx=N_CTX, gpu_layers=0, **SETTINGS)


def trace(model: MossAudio, rows: np.ndarray, instruction: str, n: int,
          continuation: list[int] | None = None) -> Trace:
    """Prefill the prompt, write `n` greedy tokens (stop tokens not applied, so every trace
    has `n`), then rewind to the prompt and feed `continuation` (default: those tokens)
    asking for the logits at every position."""
    pieces = build_prompt(model.manifest, model.engine.tokenize, len(rows), instruction)
    sequence = model.engine.start(pieces, rows)
    prompt_end = sequence.n_past
    greedy = list(sequence.decode(n, stop_ids=()))
    last = pieces[-1]
    assert isinstance(last, Tokens)  # the prompt ends with the assistant turn's tokens
    sequence.truncate(prompt_end - 1)  # re-feeding the last prompt token gives its logits back
    forced = greedy if continuation is None else continuation
    return Trace(greedy, sequence.eval_tokens([last.ids[-1], *forced[:-1]], logits_from=0))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare_rows(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    cosine = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    return {"cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min()),
            "rel_error": float(np.linalg.norm(got - ref) / np.linalg.norm(ref))}


def compare_traces(ref: Trace, got: Trace) -> dict[str, float | bool]:
    p, q = log_softmax(ref.logits), log_softmax(got.logits)
    kl = (np.exp(p) * (p - q)).sum(axis=-1)
    shared = next((i for i, (a, b) in enumerate(zip(ref.greedy, got.greedy)) if a != b), len(ref.greedy))
    return {"top1_agreement": float((ref.logits.argmax(-1) == got.logits.argmax(-1)).mean()),
            "mean_kl": float(kl.mean()), "max_kl": float(kl.max()),
            "greedy_agreement": shared / len(ref.greedy), "greedy_identical": shared == len(ref.greedy)}


def measure_fidelity(source: Bundle, candidate: Bundle, threads: int | None = None,
                     n_tokens: int = CONTINUATION_TOKENS,
                     count: Callable[[int, int], None] = lambda done, total: None) -> dict[str, Any]:
    """The report comparing `candidate` with `source`. One bundle is loaded at a time."""
    probes = probe_signals()
    sequences = [p for p in probes if p.instruction]
    total, done = 2 * len(probes) + 3 * len(sequences), 0

    def tick() -> None:
        nonlocal done
        done += 1
        count(done, total)

    def run(bundle: Bundle, work: Callable[[MossAudio], Any]) -> Any:
        model = open_model(bundle, threads)
        try:
            return work(model)
        finally:
            model.close()
            del model
            gc.collect()  # the encoder session's memory goes before the next bundle loads

    def encode_all(model: MossAudio) -> dict[str, np.ndarray]:
        rows = {}
        for p in probes:
            rows[p.name] = model.engine.encode(p.samples)
            tick()
        return rows

    def reference(model: MossAudio):
        rows = encode_all(model)
        traces = {}
        for p in sequences:
            traces[p.name] = trace(model, rows[p.name], p.instruction, n_tokens)
            tick()
        return rows, traces

    ref_rows, ref_traces = run(source, reference)

    def candidate_side(model: MossAudio):
        rows = encode_all(model)
        llm, e2e = {}, {}
        for p in sequences:
            forced = ref_traces[p.name].greedy
            llm[p.name] = compare_traces(ref_traces[p.name], trace(model, ref_rows[p.name], p.instruction,
                                                                   n_tokens, forced))
            tick()
            e2e[p.name] = compare_traces(ref_traces[p.name], trace(model, rows[p.name], p.instruction,
                                                                   n_tokens, forced))
            tick()
        return rows, llm, e2e

    rows, llm, e2e = run(candidate, candidate_side)
    return {
        "settings": {**SETTINGS, "threads": threads, "continuation_tokens": n_tokens,
                     "reference": f"{source.manifest.encoder.dtype} encoder, {source.manifest.llm.dtype} GGUF"},
        "signals": {p.name: {"seconds": round(len(p.samples) / SAMPLE_RATE, 2), "origin": p.origin,
                             "instruction": p.instruction} for p in probes},
        "encoder": {p.name: compare_rows(ref_rows[p.name], rows[p.name]) for p in probes},
        "llm": llm,
        "end_to_end": e2e,
    }


MEMORY_PROBE = """
import json, sys
from pathlib import Path
import numpy as np
from edge_runtime.bundle import Bundle, Manifest
from edge_runtime.measure import peak_rss_bytes
from edge_runtime.transcribe import MossAudio
spec = json.load(sys.stdin)
bundle = Bundle(Path(spec["directory"]), Manifest.from_dict(spec["manifest"]))
clip = (0.1 * np.random.default_rng(0).standard_normal(spec["samples"])).astype(np.float32)
MossAudio(bundle, threads=spec["threads"]).generate(clip, "Transcribe the audio.", max_tokens=4)
print(json.dumps({"peak_rss_bytes": peak_rss_bytes()}))  # this program's own, not the parent's
"""


def loaded_peak_rss_bytes(bundle: Bundle, threads: int | None = None) -> int:
    """Peak resident memory of a fresh process that loads `bundle` with the runtime's default
    settings and answers a 4 s clip (the manifest is handed over, so the bundle need not be
    in place yet)."""
    spec = {"directory": str(bundle.directory), "manifest": json.loads(bundle.manifest.to_json()),
            "threads": threads, "samples": int(MEMORY_CLIP_SECONDS * SAMPLE_RATE)}
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE], input=json.dumps(spec),
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{bundle.directory}: loading the bundle to measure its memory failed:\n{result.stderr}")
    return json.loads(result.stdout.splitlines()[-1])["peak_rss_bytes"]


def bundle_sizes(bundle: Bundle) -> dict[str, int]:
    m = bundle.manifest
    return {"encoder_bytes": m.encoder.size, "llm_bytes": m.llm.size, "total_bytes": m.encoder.size + m.llm.size}
