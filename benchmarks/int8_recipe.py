"""int8 through optimum's ORTQuantizer against the recipe it replaced: files, size, speed, fidelity.

The replaced recipe, onnxruntime's quantize_dynamic with the settings measured for this
encoder (only MatMuls with a constant weight, s8 symmetric per-channel weights, u8
activations, reduce_range for AVX2), lives here as the baseline and nowhere in the library.
For every int8 layout of quantize/presets.py both paths quantize the same fp32 encoder; and
optimum's avx2 preset as it ships (u8 weights) shows why the library keeps s8 there.

- files: whether the two encoders are byte-identical, else whether nodes and weights are
- size on disk
- speed: every variant loaded together (CPU, the runtime's thread count) and timed in
  interleaved rounds, one 4 s chunk (400 mel frames) per run as the live runtime runs;
  median ms per chunk, and the medians of its per-round time ratios to the replaced recipe
  and to fp32
- fidelity: row cosine (mean / min) and relative error against fp32 on moss_audio_edge.quantize.fidelity's
  probe signals (espeak-ng speech, noise, music-like)

    python benchmarks/int8_recipe.py --model nano --work-dir /tmp/int8-recipe
    python benchmarks/int8_recipe.py --model 4b --work-dir /tmp/int8-recipe

nano: the shipped nano weights' fp32 encoder (export/nano/release.py builds the float bundle).
4b: random weights with the published MOSS-Audio-4B-Instruct audio config: the real encoder's
shapes, so size and speed are the real ones (its LLM cut to 3 layers, unused here).
Updates the model's section of benchmarks/results/int8_recipe.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort

from edge_runtime.features import log_mel_spectrogram
from moss_audio_edge.quantize.fidelity import compare_rows, probe_signals
from moss_audio_edge.quantize.onnx_quant import int8_config, quantize_encoder, weight_matmuls
from moss_audio_edge.quantize.presets import INT8_LAYOUTS
from quantize_4b import encoder_rows  # benchmarks/ is the script's directory
from results_file import RESULTS, provenance, stamp, write_results

if TYPE_CHECKING:
    from optimum.onnxruntime import QuantizationConfig

CHUNK_FRAMES = 400
ROUNDS = {"nano": 101, "4b": 7}
ENCODER = "encoder.onnx"


def replaced_recipe(source: Path, out: Path, reduce_range: bool) -> None:
    """The int8 recipe before optimum: quantize_dynamic with the measured settings."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(onnx.load(str(source)), out, op_types_to_quantize=["MatMul"], per_channel=True,
                     reduce_range=reduce_range, weight_type=QuantType.QInt8,
                     extra_options={"MatMulConstBOnly": True, "WeightSymmetric": True})


def optimum_avx2_as_shipped(source: Path, out: Path) -> None:
    """optimum's avx2 preset with its own u8 weights, 7-bit, otherwise the library's recipe."""
    from optimum.onnxruntime import AutoQuantizationConfig, ORTQuantizer

    matmuls = list(weight_matmuls(onnx.load(str(source), load_external_data=False)))
    config = AutoQuantizationConfig.avx2(is_static=False, per_channel=True, reduce_range=True,
                                         operators_to_quantize=["MatMul"], nodes_to_quantize=matmuls)
    ORTQuantizer.from_pretrained(source.parent, file_name=source.name).quantize(config, out.parent, file_suffix=None)


def float_encoder(model: str, work: Path) -> list[Path]:
    """The fp32 encoder's files (model first), built once per work directory."""
    if model == "nano":
        from moss_audio_edge.export.nano.release import build_float_bundle

        bundle = work / "nano" / "bundle-f16"
        if not (bundle / ENCODER).exists():
            build_float_bundle(work / "nano")
        return [bundle / ENCODER]
    out = work / "4b" / "fp32"
    if not (out / ENCODER).exists():
        from moss_audio_edge.export.checkpoint import Checkpoint
        from moss_audio_edge.export.checkpoint_writer import config_with
        from moss_audio_edge.export.onnx_encoder import export_audio_encoder
        from moss_audio_edge.export.reference import AudioRowsModel

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests/ is not installed
        from tests.fixtures.checkpoints import write_random_checkpoint

        checkpoint = work / "4b" / "checkpoint"
        if not (checkpoint / "config.json").exists():
            write_random_checkpoint(checkpoint, config_with(language={"num_hidden_layers": 3}), seed=0)
        out.mkdir(parents=True, exist_ok=True)
        export_audio_encoder(AudioRowsModel.from_checkpoint(Checkpoint(checkpoint)), out / ENCODER)
    return sorted(out.glob(ENCODER + "*"))


def variants(source: Path, work: Path) -> dict[str, Path]:
    """Variant name -> encoder file: fp32, the replaced recipe per reduce_range, the library's
    optimum path per layout, optimum's avx2 as shipped. Files already there are reused."""
    paths = {"fp32": source}
    for reduce_range in (False, True):
        paths[f"replaced{'-7bit' if reduce_range else ''}"] = work / f"replaced-rr{int(reduce_range)}" / ENCODER
    for layout in INT8_LAYOUTS:
        paths[f"optimum-{layout}"] = work / f"optimum-{layout}" / ENCODER
    paths["optimum-avx2-u8"] = work / "optimum-avx2-u8" / ENCODER
    files = [p.name for p in sorted(source.parent.glob(source.name + "*"))]
    for name, path in paths.items():
        if path.exists() or name == "fp32":
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"quantizing {name}", flush=True)
        if name.startswith("replaced"):
            replaced_recipe(source, path, reduce_range=name.endswith("7bit"))
        elif name == "optimum-avx2-u8":
            optimum_avx2_as_shipped(source, path)
        else:
            quantize_encoder(source.parent, files, path.parent, "int8", INT8_LAYOUTS[name.removeprefix("optimum-")])
    return paths


def baseline(name: str) -> str:
    """The replaced-recipe variant a new one is compared with."""
    layout = name.removeprefix("optimum-").removesuffix("-u8")
    return "replaced-7bit" if INT8_LAYOUTS[layout].reduce_range else "replaced"


def same_files(a: Path, b: Path) -> dict[str, bool]:
    if a.read_bytes() == b.read_bytes():
        return {"bytes": True, "nodes": True, "weights": True}
    x, y = onnx.load(str(a)), onnx.load(str(b))
    return {"bytes": False, "nodes": list(x.graph.node) == list(y.graph.node),
            "weights": sorted(t.SerializeToString() for t in x.graph.initializer)
            == sorted(t.SerializeToString() for t in y.graph.initializer)}


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def speed(sessions: dict[str, ort.InferenceSession], rounds: int) -> dict[str, list[float]]:
    """ms per chunk, every round running every variant once; the order flips each round so
    that no variant always follows the same one."""
    mel = np.random.default_rng(0).standard_normal((1, 128, CHUNK_FRAMES)).astype(np.float32)
    feed = {"mel": mel, "lengths": np.array([CHUNK_FRAMES], dtype=np.int64)}
    for s in sessions.values():
        s.run(None, feed)  # warm-up: first-run allocations and kernel choice
    times: dict[str, list[float]] = {name: [] for name in sessions}
    order = list(sessions)
    for _ in range(rounds):
        for name in order:
            started = time.perf_counter()
            sessions[name].run(None, feed)
            times[name].append((time.perf_counter() - started) * 1000)
        order.reverse()
    return times


def config_fields(config: QuantizationConfig) -> dict[str, object]:
    """What the library's QuantizationConfig for a layout asks of onnxruntime."""
    return {"is_static": config.is_static, "activations": config.activations_dtype.name,
            "weights": config.weights_dtype.name, "weights_symmetric": config.weights_symmetric,
            "per_channel": config.per_channel, "reduce_range": config.reduce_range,
            "operators": list(config.operators_to_quantize), "nodes": len(config.nodes_to_quantize)}


def measure(model: str, work: Path, threads: int, command: str) -> dict:
    source = float_encoder(model, work)[0]
    paths = variants(source, work / model)
    sizes = {name: sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) for name, path in paths.items()}
    sessions = {name: session(path, threads) for name, path in paths.items()}
    print("timing", flush=True)
    times = speed(sessions, ROUNDS[model])

    def ratio(name: str, to: str) -> float:
        """Median of the per-round ratios: each pair ran back to back, under the same load."""
        return round(statistics.median(a / b for a, b in zip(times[name], times[to])), 3)

    print("fidelity", flush=True)
    mels = {p.name: log_mel_spectrogram(p.samples) for p in probe_signals()}
    reference = encoder_rows(sessions["fp32"], mels)
    table = {}
    for name, path in paths.items():
        row = {"mib": round(sizes[name] / 2**20, 2), "ms_per_chunk": round(statistics.median(times[name]), 2),
               "vs_fp32": ratio(name, "fp32")}
        if name.startswith("optimum-"):
            old = baseline(name)
            row |= {"baseline": old, "vs_baseline": ratio(name, old),
                    "size_vs_baseline": round(sizes[name] / sizes[old], 4),
                    "same_as_baseline": same_files(path, paths[old])}
        if name != "fp32":
            row["fidelity"] = {signal: compare_rows(reference[signal], got)
                               for signal, got in encoder_rows(sessions[name], mels).items()}
        table[name] = row
    matmuls = weight_matmuls(onnx.load(str(source), load_external_data=False))
    return {**stamp(command), "threads": threads, "rounds": ROUNDS[model], "onnxruntime": ort.__version__,
            "optimum_configs": {layout: config_fields(int8_config(spec, list(matmuls)))
                                for layout, spec in INT8_LAYOUTS.items()},
            "weight_matmuls": len(matmuls), "variants": table}


def markdown(results: dict[str, dict]) -> list[str]:
    lines = ["# int8 through optimum's ORTQuantizer against the replaced quantize_dynamic recipe", "",
             "`replaced`: onnxruntime's quantize_dynamic with the measured settings (MatMuls with constant "
             "weights, u8 x s8 per-channel symmetric, stem Convs float); `-7bit`: reduce_range. "
             "`optimum-LAYOUT`: the library's path, optimum's AutoQuantizationConfig preset per layout "
             "(quantize/presets.py). `optimum-avx2-u8`: optimum's avx2 preset with its own u8 weights. "
             "Speed: one 4 s chunk per run, median over interleaved rounds; `x baseline` and `x fp32` are "
             "medians of the per-round time ratios to the replaced recipe with the same reduce_range and to "
             "fp32 (below 1 is faster). "
             "Byte-identical files time alike by construction: their ratio shows the noise of the machine.", ""]
    for model, r in results.items():
        lines += [f"## {model} encoder ({r['weight_matmuls']} weight matrices)", "", provenance(r),
                  f"Threads: {r['threads']}. Rounds: {r['rounds']}. onnxruntime {r['onnxruntime']}.", "",
                  "| variant | identical to baseline (file / nodes / weights) | MiB | ms per chunk | x baseline "
                  "| x fp32 | speech cosine mean / min | speech rel. error | noise rel. error | music rel. error |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, v in r["variants"].items():
            same = v.get("same_as_baseline")
            identical = (f"{v['baseline']}: " + " / ".join("yes" if same[k] else "no" for k in ("bytes", "nodes", "weights"))
                         if same else "-")
            f = v.get("fidelity")
            quality = (" | ".join([f"{f['speech']['cosine_mean']:.5f} / {f['speech']['cosine_min']:.5f}" if "speech" in f
                                   else "-", *(f"{f[s]['rel_error']:.4f}" if s in f else "-"
                                               for s in ("speech", "noise", "music"))])
                       if f else "reference | - | - | -")
            lines.append(f"| {name} | {identical} | {v['mib']} | {v['ms_per_chunk']} | {v.get('vs_baseline', '-')} | "
                         f"{v['vs_fp32']} | {quality} |")
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=tuple(ROUNDS), required=True)
    parser.add_argument("--work-dir", type=Path, required=True, help="float and quantized encoders, reused by reruns")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    command = f"python benchmarks/int8_recipe.py --model {args.model} --work-dir {args.work_dir}"
    previous = RESULTS / "int8_recipe.json"
    results = json.loads(previous.read_text()) if previous.exists() else {}
    results[args.model] = measure(args.model, args.work_dir, args.threads, command)
    write_results("int8_recipe", results, markdown(results))
    print("\n".join(markdown({args.model: results[args.model]})))


if __name__ == "__main__":
    sys.exit(main())
