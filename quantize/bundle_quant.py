"""A float bundle -> a quantized bundle that carries its own fidelity report.

The input bundle is only read. The output is built in a staging directory beside the target
and renamed into place with its manifest written last, so an interrupted run leaves nothing
that loads. Fidelity and memory are measured on the staged files before that rename.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from edge_runtime import __version__
from edge_runtime.bundle import Bundle, BundleError, Manifest, file_entry, load_bundle, write_manifest
from edge_runtime.errors import InputError
from edge_runtime.staging import staged_bundle_dir

from .fidelity import bundle_sizes, loaded_peak_rss_bytes, measure_fidelity
from .gguf_quant import SOURCE_TYPES, quantize_gguf
from .onnx_quant import quantize_encoder
from .presets import INT8_LAYOUTS, resolve
from .progress import step

Log = Callable[[str], None]


def check_source(source: Bundle, out: Path) -> None:
    m = source.manifest
    if m.encoder.dtype != "fp32" or m.llm.dtype not in SOURCE_TYPES:
        raise BundleError(f"{source.directory}: quantizing needs a float bundle (fp32 encoder, "
                          f"{'/'.join(SOURCE_TYPES)} GGUF) as exported; this one is "
                          f"{m.encoder.dtype} / {m.llm.dtype}")
    inside = source.directory.resolve()
    if out.resolve() == inside or inside in out.resolve().parents:
        raise InputError(f"{out}: inside the input bundle {source.directory}; "
                         "quantizing never writes into its input")


def quantize_bundle(bundle_dir: str | Path, out_dir: str | Path, target: str | None = None,
                    encoder: str | None = None, llm: str | None = None, int8_layout: str | None = None,
                    device: str | None = None, runtime_threads: int | None = None,
                    gpu_layers: int | None = None, threads: int | None = None, log: Log = print,
                    embedding_type: str | None = None) -> Path:
    """Quantize the bundle at `bundle_dir` into the new directory `out_dir`. `target` picks a
    preset (moss_audio_edge.quantize.presets.PRESETS); the arguments before `threads` override its fields.
    `threads` is for this machine's work (quantizing, measuring), not the bundle's runtime;
    `embedding_type` overrides the token embedding's type (llama.cpp picks it otherwise)."""
    source = load_bundle(bundle_dir, verify_hashes=True)  # the report is about these exact files
    out = Path(out_dir)
    check_source(source, out)
    preset = resolve(target, encoder=encoder, llm=llm, int8_layout=int8_layout,
                     device=device, threads=runtime_threads, gpu_layers=gpu_layers)
    m = source.manifest
    log(f"quantizing {source.directory} -> {out}: encoder {preset.encoder}, LLM {preset.llm}"
        f"{f', target {target}' if target else ''}")
    timings: dict[str, float] = {}
    with staged_bundle_dir(out) as staging:
        with step(log, f"encoder fp32 -> {preset.encoder}", timings, "encoder_s"):
            encoder_files = quantize_encoder(source.directory, [m.encoder.path, *m.encoder.extra_files],
                                             staging, preset.encoder, INT8_LAYOUTS[preset.int8_layout])
        with step(log, f"LLM {m.llm.dtype} -> {preset.llm}", timings, "llm_s") as count:
            llm_types = quantize_gguf(source.llm_path, staging / m.llm.path, preset.llm, threads, count,
                                      embedding_type)
        recipe = encoder_files.recipe | ({"layout": preset.int8_layout} if preset.encoder == "int8" else {})
        quantization: dict[str, Any] = {
            "encoder": preset.encoder, "llm": preset.llm, "target": target,
            "source": {"encoder": m.encoder.dtype, "llm": m.llm.dtype, "encoder_sha256": m.encoder.sha256,
                       "llm_sha256": m.llm.sha256},
            "encoder_recipe": recipe, "llm_recipe": llm_types, "runtime": preset.runtime(),
        }
        manifest = dataclasses.replace(
            m, encoder=file_entry(staging, encoder_files.files[0], preset.encoder, tuple(encoder_files.files[1:])),
            llm=file_entry(staging, m.llm.path, preset.llm), quantization=quantization,
            parity={"export": m.parity}, created_by=f"moss-audio-edge {__version__} quantize")
        candidate = Bundle(staging, manifest)
        with step(log, "fidelity against the input bundle", timings, "fidelity_s") as count:
            report = measure_fidelity(source, candidate, threads, count=count)
        with step(log, "peak memory of each bundle, loaded in a fresh process", timings, "memory_s"):
            report["memory"] = {"peak_rss_bytes": loaded_peak_rss_bytes(candidate, threads),
                                "source_peak_rss_bytes": loaded_peak_rss_bytes(source, threads)}
        report["sizes"] = {"quantized": bundle_sizes(candidate), "source": bundle_sizes(source)}
        manifest = dataclasses.replace(manifest, parity={"export": m.parity, "fidelity": report},
                                       quantization=quantization | {"timings_s": timings})
        write_manifest(staging, manifest)
    log(f"bundle written to {out}")
    return out


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def format_report(manifest: Manifest) -> str:
    """The fidelity report as a few lines of text."""
    q, r = manifest.quantization, manifest.parity["fidelity"]
    lines = [f"fidelity of encoder {q['encoder']} + LLM {q['llm']} against {r['settings']['reference']} "
             f"(KV cache {r['settings']['kv_type']}, flash attention {r['settings']['flash_attention']}):"]
    for name, e in r["encoder"].items():
        lines.append(f"  encoder rows, {name:6s}: cosine mean {e['cosine_mean']:.5f} min {e['cosine_min']:.5f}, "
                     f"relative error {e['rel_error']:.4f}")
    for part in ("llm", "end_to_end"):
        for name, t in r[part].items():
            lines.append(f"  {part.replace('_', '-'):10s} {name:6s}: top-1 agreement {t['top1_agreement']:.3f}, "
                         f"mean KL {t['mean_kl']:.4f}, greedy agreement {t['greedy_agreement']:.3f} "
                         f"over {r['settings']['continuation_tokens']} tokens")
    s, mem = r["sizes"], r["memory"]
    lines.append(f"  sizes: encoder {_size(s['quantized']['encoder_bytes'])} (was {_size(s['source']['encoder_bytes'])}), "
                 f"LLM {_size(s['quantized']['llm_bytes'])} (was {_size(s['source']['llm_bytes'])})")
    lines.append(f"  peak resident memory loaded: {_size(mem['peak_rss_bytes'])} "
                 f"(was {_size(mem['source_peak_rss_bytes'])})")
    if q["encoder_recipe"].get("matrices_fp32_bytes"):
        rec = q["encoder_recipe"]
        lines.append(f"  quantized encoder matrices: {_size(rec['matrices_fp32_bytes'])} -> "
                     f"{_size(rec['matrices_quantized_bytes'])} "
                     f"({rec['matrices_fp32_bytes'] / rec['matrices_quantized_bytes']:.2f}x smaller)")
    lines.append(f"  LLM tensor types: {q['llm_recipe']['tensor_types']} "
                 f"(token_embd {q['llm_recipe']['token_embd']}, output {q['llm_recipe']['output']})")
    return "\n".join(lines)
