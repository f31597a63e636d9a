"""Quantization at true 4B scale: sizes, encoder and LLM speed, and fidelity.

Input: the F16 bundle that `benchmarks/export_4b.py --keep` leaves (random weights, published
MOSS-Audio-4B-Instruct config: the real shapes, so sizes and speed are the real ones).

    python benchmarks/quantize_4b.py --bundle /work/bench/moss-audio-4b-random-f16 --work-dir /work/bench/q4b

1. `moss-edge quantize` twice, each in its own process (wall time, peak RSS): encoder int8 +
   LLM Q8_0, and encoder int4 + LLM Q4_K_M. Each bundle's manifest carries its fidelity report.
2. Encoder speed, all variants loaded together and timed in interleaved rounds (so background
   load hits them alike), median per variant: fp32, onnxruntime's plain dynamic int8
   (quantize_dynamic defaults: the 1.33x baseline), the int8 and int4 of step 1, the int8 with
   7-bit weights (the x86 preset) and fp16. Milliseconds per 4 s chunk, one chunk per run (live
   streaming) and eight per run (offline files); speedups against fp32 of the same run.
3. Encoder fidelity of every variant against fp32 on the same probe signals.
4. LLM prefill and decode tokens/s for F16, Q8_0 and Q4_K_M with the runtime's defaults.

Writes benchmarks/results/quantize_4b.json and benchmarks/results/quantize_4b.md.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import llama_cpp
import numpy as np
import onnxruntime as ort

from edge_runtime.bundle import load_bundle
from edge_runtime.encoder import split_chunks
from edge_runtime.features import log_mel_spectrogram
from edge_runtime.measure import llm_rates
from edge_runtime.transcribe import MossAudio
from export_4b import run_step  # benchmarks/ is the script's directory
from moss_audio_edge.quantize.fidelity import compare_rows, probe_signals
from moss_audio_edge.quantize.onnx_quant import quantize_encoder
from moss_audio_edge.quantize.presets import INT8_LAYOUTS
from results_file import stamp, write_results

QUANTIZE = """
import sys
from moss_audio_edge.quantize.bundle_quant import quantize_bundle
quantize_bundle(sys.argv[1], sys.argv[2], encoder=sys.argv[3], llm=sys.argv[4], threads=int(sys.argv[5]))
"""
VARIANTS = {"int8-Q8_0": ("int8", "Q8_0"), "int4-Q4_K_M": ("int4", "Q4_K_M")}
CHUNK_FRAMES = 400
ROUNDS = 5
PREFILL_TOKENS = 256
DECODE_TOKENS = 16
LLM_RUNS = 3


def plain_dynamic_int8(source: Path, out: Path) -> Path:
    """onnxruntime's quantize_dynamic with its defaults: every quantizable op (Conv too),
    per-tensor weights, activation-by-activation MatMuls included."""
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    out.mkdir(parents=True, exist_ok=True)
    # a model, not a path: given a path it writes a scratch copy into the input bundle
    quantize_dynamic(onnx.load(str(source / "encoder.onnx")), out / "encoder.onnx")
    return out / "encoder.onnx"


def encoder_variants(bundle: Path, bundles: dict[str, Path], work: Path) -> dict[str, Path]:
    files = [load_bundle(bundle).manifest.encoder.path, *load_bundle(bundle).manifest.encoder.extra_files]
    extra = {}
    for name, encoder_type in (("int8-7bit", "int8"), ("fp16", "fp16")):
        out = work / f"encoder-{name}"
        if not (out / files[0]).exists():
            out.mkdir(parents=True, exist_ok=True)
            quantize_encoder(bundle, files, out, encoder_type, INT8_LAYOUTS["avx2"])
        extra[name] = out / files[0]
    plain = work / "encoder-plain-int8" / "encoder.onnx"
    return {"fp32": bundle / files[0],
            "int8-plain-ort": plain if plain.exists() else plain_dynamic_int8(bundle, plain.parent),
            "int8": bundles["int8-Q8_0"] / "encoder.onnx", "int8-7bit": extra["int8-7bit"],
            "int4": bundles["int4-Q4_K_M"] / "encoder.onnx", "fp16": extra["fp16"]}


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def encoder_speed(paths: dict[str, Path], threads: int) -> dict[str, dict[str, float]]:
    sessions = {name: session(path, threads) for name, path in paths.items()}
    rng = np.random.default_rng(0)
    times: dict[str, dict[int, list[float]]] = {name: {1: [], 8: []} for name in sessions}
    for batch in (1, 8):
        mel = rng.standard_normal((batch, 128, CHUNK_FRAMES)).astype(np.float32)
        feed = {"mel": mel, "lengths": np.full(batch, CHUNK_FRAMES, dtype=np.int64)}
        for s in sessions.values():
            s.run(None, feed)  # warm-up: first-run allocations and kernel choice
        for _ in range(ROUNDS if batch == 1 else 3):
            for name, s in sessions.items():
                started = time.perf_counter()
                s.run(None, feed)
                times[name][batch].append((time.perf_counter() - started) * 1000 / batch)
    base = {b: statistics.median(times["fp32"][b]) for b in (1, 8)}
    return {name: {"ms_per_chunk_batch1": round(statistics.median(t[1]), 1),
                   "ms_per_chunk_batch8": round(statistics.median(t[8]), 1),
                   "speedup_batch1": round(base[1] / statistics.median(t[1]), 2),
                   "speedup_batch8": round(base[8] / statistics.median(t[8]), 2)}
            for name, t in times.items()}


def encoder_rows(s: ort.InferenceSession, mels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each signal's rows from one encoder session, its chunks batched in one run."""
    out = {}
    for name, mel in mels.items():
        batch, lengths = split_chunks(mel, CHUNK_FRAMES)
        got, counts = s.run(None, {"mel": batch, "lengths": lengths})
        out[name] = np.concatenate([got[i, :c] for i, c in enumerate(counts)])
    return out


def encoder_fidelity(paths: dict[str, Path], threads: int) -> dict[str, dict[str, dict[str, float]]]:
    mels = {p.name: log_mel_spectrogram(p.samples) for p in probe_signals()}
    reference = encoder_rows(session(paths["fp32"], threads), mels)
    return {name: {signal: compare_rows(reference[signal], got)
                   for signal, got in encoder_rows(session(path, threads), mels).items()}
            for name, path in paths.items() if name != "fp32"}


def llm_speed(bundle: Path, threads: int) -> dict[str, float]:
    model = MossAudio(bundle, device="cpu", threads=threads, n_ctx=1024)  # runtime defaults: f16 KV, flash auto
    try:
        return llm_rates(model.engine, PREFILL_TOKENS, DECODE_TOKENS, LLM_RUNS)
    finally:
        model.close()


def mib(n: int) -> float:
    return round(n / 2**20, 1)


def markdown(result: dict) -> list[str]:
    enc, fid = result["encoder_speed"], result["encoder_fidelity"]
    lines = ["# Quantization at 4B scale (random weights, published MOSS-Audio-4B-Instruct config)", "",
             f"Machine: {result['machine']}. Date: {result['date']}. Threads: {result['threads']}.",
             f"Command: `{result['command']}`", "",
             "## Encoder (encoder + adapters + DeepStack mergers, one 4 s chunk = 400 mel frames -> 50 rows)", "",
             "| variant | MiB on disk | ms/chunk, 1 per run | speedup | ms/chunk, 8 per run | speedup | "
             "speech cosine (mean / min) | speech rel. error | noise rel. error | music rel. error |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in enc.items():
        f = fid.get(name)
        quality = (f"{f['speech']['cosine_mean']:.5f} / {f['speech']['cosine_min']:.5f} | {f['speech']['rel_error']:.4f} | "
                   f"{f['noise']['rel_error']:.4f} | {f['music']['rel_error']:.4f}") if f else "reference | - | - | -"
        lines.append(f"| {name} | {result['encoder_sizes_mib'][name]} | {s['ms_per_chunk_batch1']} | "
                     f"{s['speedup_batch1']}x | {s['ms_per_chunk_batch8']} | {s['speedup_batch8']}x | {quality} |")
    lines += ["", "## LLM (llama.cpp, f16 KV cache, flash attention auto)", "",
              "| GGUF | GiB on disk | prefill tok/s | decode tok/s | tensor types |", "|---|---|---|---|---|"]
    for name, s in result["llm_speed"].items():
        lines.append(f"| {name} | {result['llm_sizes_gib'][name]} | {s['prefill_tok_s']} | {s['decode_tok_s']} | "
                     f"{result['llm_tensor_types'].get(name, 'as exported')} |")
    lines += ["", "## Fidelity against the F16 / fp32 bundle (each quantized bundle's own manifest report)", "",
              "KV cache f32 and flash attention off on both sides; 32 teacher-forced tokens per sequence. "
              "`llm`: both LLMs get the fp32 encoder's rows; `end-to-end`: each bundle its own rows.", "",
              "| bundle | part | sequence | top-1 agreement | mean KL | max KL | greedy agreement |",
              "|---|---|---|---|---|---|---|"]
    for name, report in result["fidelity"].items():
        for part in ("llm", "end_to_end"):
            for seq, t in report[part].items():
                lines.append(f"| {name} | {part} | {seq} | {t['top1_agreement']:.3f} | {t['mean_kl']:.4f} | "
                             f"{t['max_kl']:.4f} | {t['greedy_agreement']:.3f} |")
    lines += ["", "## Sizes, memory and quantization cost", "",
              "| bundle | encoder GiB | LLM GiB | peak RSS loaded, GiB (source) | quantize wall s | quantize peak RSS GiB |",
              "|---|---|---|---|---|---|"]
    for name, report in result["fidelity"].items():
        s, mem, step = report["sizes"]["quantized"], report["memory"], result["quantize_steps"][name]
        lines.append(f"| {name} | {s['encoder_bytes'] / 2**30:.2f} | {s['llm_bytes'] / 2**30:.2f} | "
                     f"{mem['peak_rss_bytes'] / 2**30:.2f} ({mem['source_peak_rss_bytes'] / 2**30:.2f}) | "
                     f"{step['wall_s']} | {step['peak_rss_gib']} |")
    return lines + ["", f"llama.cpp system info: `{result['llama_system_info']}`"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True, help="the F16 bundle from export_4b.py --keep")
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--keep", action="store_true", help="keep the quantized bundles")
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    bundles = {}
    steps_file = args.work_dir / "quantize_steps.json"  # a rerun reuses finished bundles
    steps = json.loads(steps_file.read_text()) if steps_file.exists() else {}
    for name, (encoder_type, llm_type) in VARIANTS.items():
        bundles[name] = args.work_dir / name
        if name not in steps:
            print(f"quantizing {name}", flush=True)
            steps[name] = run_step(QUANTIZE, str(args.bundle), str(bundles[name]), encoder_type, llm_type,
                                   str(args.threads))
            steps_file.write_text(json.dumps(steps))
    print("encoder variants, speed and fidelity", flush=True)
    encoders = encoder_variants(args.bundle, bundles, args.work_dir)
    speed = encoder_speed(encoders, args.threads)
    gc.collect()
    fidelity = encoder_fidelity(encoders, args.threads)
    print("LLM speed", flush=True)
    llms = {"F16": args.bundle, "Q8_0": bundles["int8-Q8_0"], "Q4_K_M": bundles["int4-Q4_K_M"]}
    manifests = {name: load_bundle(path).manifest for name, path in bundles.items()}
    result = {
        **stamp(f"python benchmarks/quantize_4b.py --bundle {args.bundle} --work-dir {args.work_dir}"),
        "threads": args.threads,
        "onnxruntime": ort.__version__, "llama_cpp_python": llama_cpp.__version__,
        "llama_system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "quantize_steps": steps,
        "encoder_sizes_mib": {name: mib(sum(p.stat().st_size for p in path.parent.glob(path.name + "*")))
                              for name, path in encoders.items()},
        "encoder_speed": speed,
        "encoder_fidelity": fidelity,
        "llm_speed": {name: llm_speed(path, args.threads) for name, path in llms.items()},
        "llm_sizes_gib": {name: round(path.stat().st_size / 2**30, 2) for name, path in llms.items()},
        "llm_tensor_types": {m.llm.dtype: m.quantization["llm_recipe"]["tensor_types"] for m in manifests.values()},
        "encoder_recipes": {m.encoder.dtype: m.quantization["encoder_recipe"] for m in manifests.values()},
        "fidelity": {name: m.parity["fidelity"] for name, m in manifests.items()},
    }
    write_results("quantize_4b", result, markdown(result))
    print(json.dumps({k: result[k] for k in ("encoder_speed", "llm_speed")}, indent=2))
    if not args.keep:
        import shutil
        shutil.rmtree(args.work_dir)


if __name__ == "__main__":
    sys.exit(main())
