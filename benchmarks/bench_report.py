"""bench_4b.py's results: target estimates, the markdown tables, the plot.

Estimates for other devices scale what was measured here by the ratio of the target's public
specs to this machine's measured limits: decode by memory bandwidth, encoder and prefill by
matrix throughput. That assumes the target reaches its spec figures as efficiently as this
machine reaches its measured ones, so they are estimates, not measurements.
"""
from __future__ import annotations

from pathlib import Path

from results_file import write_results  # benchmarks/ is the script's directory

# Public specifications (not measured here).
TARGETS = {
    "Raspberry Pi 5": {
        "bandwidth_gb_s": 17.1, "matmul_gflop_s": 153.6,
        "spec": "4x Cortex-A76 @ 2.4 GHz, 2 x 128-bit NEON FMA pipes per core (16 fp32 FLOP/cycle) = "
                "153.6 GFLOP/s; LPDDR4X-4267 on a 32-bit bus = 17.1 GB/s (theoretical)"},
    "Raspberry Pi 5 (sustained bandwidth)": {
        "bandwidth_gb_s": 11.4, "matmul_gflop_s": 153.6,
        "spec": "as above, with the ~11.4 GB/s sustained DRAM bandwidth that public Pi 5 measurements report"},
    "Jetson Orin Nano 8GB": {
        "bandwidth_gb_s": 68.0, "matmul_gflop_s": 1280.0,
        "spec": "GPU 1024 CUDA cores @ 625 MHz = 1.28 TFLOP/s fp32 (FMA); 128-bit LPDDR5 = 68 GB/s (NVIDIA datasheet)"},
    "Jetson Orin Nano 8GB Super": {
        "bandwidth_gb_s": 102.0, "matmul_gflop_s": 2089.0,
        "spec": "JetPack 6.1+ MAXN SUPER: GPU @ 1020 MHz = 2.09 TFLOP/s fp32; LPDDR5 = 102 GB/s (NVIDIA)"},
    "Jetson Orin NX 16GB": {
        "bandwidth_gb_s": 102.4, "matmul_gflop_s": 1880.0,
        "spec": "GPU 1024 CUDA cores @ 918 MHz = 1.88 TFLOP/s fp32; 128-bit LPDDR5 = 102.4 GB/s (NVIDIA datasheet)"},
}


def estimates(result: dict) -> dict:
    """Per target and variant: the decode ceiling its bandwidth sets, and estimated decode and
    prefill tokens/s and end-to-end RTF scaled from this machine's measurements."""
    here = result["machine_limits"][str(result["threads"])]
    out = {}
    for target, spec in TARGETS.items():
        bandwidth = spec["bandwidth_gb_s"] / here["bandwidth_gb_s"]
        compute = spec["matmul_gflop_s"] / here["matmul_gflop_s"]
        rows = {}
        for name, llm in result["llm"].items():
            ceiling = spec["bandwidth_gb_s"] * 1e9 / llm["costs"]["decode_bytes_per_token"]
            row = {"decode_ceiling_tok_s": round(ceiling, 1),
                   "decode_tok_s": round(llm["runtime"]["decode_tok_s"] * bandwidth, 1),
                   "prefill_tok_s": round(llm["runtime"]["prefill_tok_s"] * compute, 1)}
            if name in result["end_to_end"]:
                e2e = result["end_to_end"][name]
                t = e2e["timings_s"]
                seconds = (t["encode_s"] + t["prefill_s"]) / compute + t["decode_s"] / bandwidth
                row["rtf"] = float(f"{seconds / e2e['audio_s']:.3g}")  # 3 significant digits: tiny models round to 0
            rows[name] = row
        out[target] = {"spec": spec["spec"], "bandwidth_ratio": round(bandwidth, 2),
                       "compute_ratio": round(compute, 2), "variants": rows}
    return out


def _runs(result: dict) -> tuple[dict[tuple, str], list[str]]:
    """Run ids (A = this run) and their legend; earlier runs are the build steps' own."""
    keys = [(result["machine"], result["date"], result["command"])]
    for step in result["build"].values():
        key = (step.get("machine", result["machine"]), step["date"], step["command"])
        if key not in keys:
            keys.append(key)
    ids = {key: chr(ord("A") + i) for i, key in enumerate(keys)}
    return ids, _table(["run", "machine", "date", "command"],
                       [[ids[key], key[0], key[1] or "-", f"`{key[2]}`"] for key in keys])


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


def _share(llm: dict, phase: str) -> str:
    return f"{llm['runtime'][f'{phase}_tok_s'] / llm['limits'][f'{phase}_tok_s']:.0%}"


def markdown(result: dict) -> list[str]:
    ids, legend = _runs(result)
    this = ids[(result["machine"], result["date"], result["command"])]
    n, clip, versions = result["threads"], result["clip"], result["versions"]
    threads = sorted(int(t) for t in result["machine_limits"])
    any_llm = next(iter(result["llm"].values()))
    lines = [f"# MOSS-Audio-4B at full scale{' (smoke run, tiny bundles)' if result['smoke'] else ''}", "",
             "Random weights with the published MOSS-Audio-4B-Instruct config: the real shapes, so the real cost. "
             f"Medians of {result['runs']} runs; every row names its run.", "", *legend, "",
             f"onnxruntime {versions['onnxruntime']}, llama-cpp-python {versions['llama_cpp_python']}; "
             f"llama.cpp: `{versions['llama_system_info']}`"]
    if "load_average_1min" in result:
        load = result["load_average_1min"]
        lines += ["", f"1-minute load average at the start and end of the run: {load['start']} / {load['end']}."]
    if result["build"]:
        lines += ["", "## Build (each step in its own process)", "", *_table(
            ["step", "wall s", "peak RSS GiB", "run"],
            [[step, s["wall_s"], s["peak_rss_gib"], ids[(s.get("machine", result["machine"]), s["date"], s["command"])]]
             for step, s in result["build"].items()])]
    lines += ["", "## Machine limits (best of 5)", "", *_table(
        ["threads", "read bandwidth GB/s (fp32 GEMV)", "fp32 GEMM GFLOP/s", "run"],
        [[t, m["bandwidth_gb_s"], m["matmul_gflop_s"], this]
         for t, m in ((t, result["machine_limits"][str(t)]) for t in threads)])]
    lines += ["", "## Encoder (encoder + adapter + DeepStack mergers; one 4 s chunk = 400 mel frames -> 50 rows)", "",
              *_table(["variant", "encoder", "GiB", *(f"ms/chunk, {t} thread(s)" for t in threads), "run"],
                      [[name, b["encoder"], b["encoder_gib"],
                        *(result["encoder_ms_per_chunk"][str(t)][name] for t in threads), this]
                       for name, b in result["bundles"].items()])]
    lines += ["", f"## LLM ({n} threads; prefill {any_llm['prefill_tokens']} tokens, decode "
                  f"{any_llm['decode_tokens']} tokens, a fixed length; f16 KV cache)", "",
              "Overhead = this runtime's time / llama.cpp's own loop's time on the same context. Limits: decode at "
              "the measured read bandwidth (every weight but the embedding table, plus the KV cache, per token); "
              "prefill at the measured fp32 GEMM throughput (2 FLOPs per matrix weight, plus attention).", "",
              *_table(["variant", "GGUF", "GiB", "prefill tok/s", "llama.cpp loop", "overhead", "decode tok/s",
                       "llama.cpp loop", "overhead", "decode limit", "of limit", "prefill limit", "of limit", "run"],
                      [[name, result["bundles"][name]["llm"], result["bundles"][name]["llm_gib"],
                        s["runtime"]["prefill_tok_s"], s["llama_cpp"]["prefill_tok_s"], s["overhead"]["prefill"],
                        s["runtime"]["decode_tok_s"], s["llama_cpp"]["decode_tok_s"], s["overhead"]["decode"],
                        s["limits"]["decode_tok_s"], _share(s, "decode"), s["limits"]["prefill_tok_s"],
                        _share(s, "prefill"), this]
                       for name, s in result["llm"].items()])]
    lines += ["", f"## End to end: {clip['seconds']} s clip, {clip['utterances']} espeak-ng utterances, "
                  "sentence timestamps", "",
              f"A fresh process per run with the runtime's defaults ({n} threads, 30 s windows). Random weights never "
              f"stop, so each window decodes exactly its budget: {clip['tokens_per_second']} tokens per second of "
              "audio, split over the windows: the length of this clip's true transcript with timestamps "
              f"({clip['reference_tokens']} tokens). RTF = processing time / audio time (loading excluded); peak RSS "
              "includes loading.", "",
              *_table(["variant", "RTF", "peak RSS GiB", "encode s", "prefill s", "decode s", "windows x tokens",
                       "run"],
                      [[name, e["rtf"], e["peak_rss_gib"], e["timings_s"]["encode_s"], e["timings_s"]["prefill_s"],
                        e["timings_s"]["decode_s"], f"{e['windows']} x {e['decode_budget_per_window']}", this]
                       for name, e in result["end_to_end"].items()])]
    if result["streaming"]:
        lines += ["", "## Streaming at real-time pace (benchmarks/stream_latency.py's runner, drafts on)", "",
                  f"Readouts capped at {clip['tokens_per_second']} tokens per second of audio (the same stand-in for "
                  "a stop token). Latency: from the end of an utterance to the final event that covers it.", "",
                  *_table(["variant", "p50 s", "p95 s", "readouts", "readout mean s", "max lag s", "run"],
                          [[name, s["latency_p50_s"], s["latency_p95_s"], s["readouts"], s["readout_mean_s"],
                            s["max_lag_s"], this] for name, s in result["streaming"].items()])]
    lines += ["", "## Estimates for the edge targets (not measured: public specs x the efficiency measured here)", "",
              "Decode scaled by memory bandwidth, encoder and prefill by matrix throughput, from this machine's "
              "measured limits to the target's spec; the decode ceiling is the spec bandwidth / bytes per token. "
              "GPU figures use fp32 CUDA-core throughput, a floor (tensor cores do more).", "",
              *_table(["target", "variant", "decode ceiling tok/s", "decode tok/s (est.)", "prefill tok/s (est.)",
                       "RTF (est.)"],
                      [[target, name, v["decode_ceiling_tok_s"], v["decode_tok_s"], v["prefill_tok_s"],
                        v.get("rtf", "-")]
                       for target, est in result["estimates"].items() for name, v in est["variants"].items()]),
              "", "Specs used (public, not measured here):", "",
              *(f"- {target}: {est['spec']}" for target, est in result["estimates"].items())]
    return lines


def plot(result: dict, path: Path) -> bool:
    """Measured tokens/s against llama.cpp's own loop and the physical limit; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        return False
    names = list(result["llm"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, phase in zip(axes, ("decode", "prefill")):
        series = {"this runtime": [result["llm"][n]["runtime"][f"{phase}_tok_s"] for n in names],
                  "llama.cpp's own loop": [result["llm"][n]["llama_cpp"][f"{phase}_tok_s"] for n in names],
                  "limit (measured bandwidth)" if phase == "decode" else "limit (measured fp32 GEMM)":
                      [result["llm"][n]["limits"][f"{phase}_tok_s"] for n in names]}
        for i, (label, values) in enumerate(series.items()):
            ax.bar([x + (i - 1) * 0.27 for x in range(len(names))], values, width=0.27, label=label)
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel("tokens/s")
        ax.set_title(f"LLM {phase} ({result['threads']} threads)")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"{result['machine']} — {result['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_outputs(result: dict, results_dir: Path, name: str) -> None:
    result["estimates"] = estimates(result)
    write_results(name, result, markdown(result), results_dir)
    plotted = plot(result, results_dir / f"{name}.png")
    print(f"wrote {results_dir / name}.json, .md{', .png' if plotted else ' (no matplotlib: no plot)'}")
