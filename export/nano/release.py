"""Build the shipped nano bundle from the compact weights in the repository.

compact weights -> checkpoint in the published layout -> F16 bundle (`export_bundle`) ->
int8 encoder + Q8_0 LLM with a Q5_1 token embedding (`quantize_bundle`) -> model card.

    python -m moss_audio_edge.export.nano.release --work-dir /tmp/nano-release \
        [--quality benchmarks/results/nano_quality.json] [--out edge_runtime/models/nano]

The quality figures in the model card are read from the benchmark's results
(benchmarks/nano_quality.py), which evaluates this same recipe.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from edge_runtime.bundle import EMBEDDED_BUNDLES, load_bundle, write_manifest
from edge_runtime.staging import atomic_path

from ..bundle_export import export_bundle
from . import corpus
from .train import INSTRUCTIONS, MAX_CLIP_SECONDS, NANO_CONFIG
from .weights import WEIGHTS_FILE, write_nano_checkpoint

# avx2: 7-bit int8 weights, exact on every x86 CPU (and on ARM); the bundle is portable.
SHIPPED_RECIPE: dict[str, str] = {"encoder": "int8", "llm": "Q8_0", "embedding_type": "Q5_1", "int8_layout": "avx2"}
SHIPPED_NAME = "int8 + Q8_0 (embedding Q5_1)"
ENCODER_STEPS, JOINT_STEPS = 5000, 7500
TRAIN_STEPS = ENCODER_STEPS + JOINT_STEPS
TRAIN_COMMAND = (f"python -m moss_audio_edge.export.nano.train --work-dir WORK --encoder-steps {ENCODER_STEPS} --steps {JOINT_STEPS} "
                 "--voices 1500 --sentences-per-voice 8 --weights-out export/nano/nano-weights.safetensors")


def build_float_bundle(work_dir: Path, weights: Path = WEIGHTS_FILE) -> Path:
    checkpoint = write_nano_checkpoint(NANO_CONFIG, work_dir / "checkpoint", weights,
                                       tokenizer_cache=work_dir / "tokenizer-cache")
    out = work_dir / "bundle-f16"
    if out.exists():
        shutil.rmtree(out)
    return export_bundle(checkpoint, out, llm_type="F16", log=lambda _: None)


def model_card(quality: dict[str, Any] | None, weights: Path = WEIGHTS_FILE) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        trained = f.metadata() or {}
    a, lm = NANO_CONFIG["audio_config"], NANO_CONFIG["language_config"]
    split = corpus.split_variants()
    fields = ("bundle", "set", "clips", "size_mb", "wer", "timestamp_mae_ms", "sentences_matched",
              "wer_worst_clip", "timestamp_mae_ms_worst_clip")
    measured = [{k: row[k] for k in fields} for row in (quality or {}).get("rows", [])]
    return {
        "name": "MOSS-Audio nano",
        "summary": ("A 3.3 M-parameter MOSS-Audio trained from scratch on espeak-ng speech of spoken commands "
                    "and digits: the published architecture, checkpoint layout, Qwen vocabulary, prompts and "
                    "time markers, only small. It knows only that vocabulary."),
        "architecture": {"encoder": f"{a['encoder_layers']} layers x {a['d_model']}, DeepStack from layers "
                                    f"{a['deepstack_encoder_layer_indexes']}",
                         "llm": f"Qwen3 {lm['num_hidden_layers']} layers x {lm['hidden_size']}, tied embeddings"},
        "training": {
            "data": ("espeak-ng sentences from a command grammar (digits, numbers, rooms, devices, names, "
                     f"short commands), {len(corpus.ACCENTS)} English accents x {len(split.train_variants)} voice "
                     f"variants, speeds {list(corpus.TRAIN_SPEEDS)} words/min, random pitch; clips up to "
                     f"{MAX_CLIP_SECONDS:.0f} s with random silences, noise (5-40 dB SNR), room echo and gain (the "
                     "timestamp task's clips without noise or echo once the LLM trains)"),
            "tasks": list(INSTRUCTIONS),
            "command": TRAIN_COMMAND,
            "seed": 0,
            "steps_trained": int(trained.get("steps", 0)),
            "encoder_phase_steps": int(trained.get("encoder_steps", 0)),
            "batch_size": int(trained.get("batch_size", 0)),
        },
        "held_out": {"voice_variants": list(split.held_out_variants), "speeds_wpm": list(corpus.HELD_OUT_SPEEDS)},
        "quality": {"source": "benchmarks/results/nano_quality.json", "date": (quality or {}).get("date"),
                    "clips_per_set": (quality or {}).get("clips_per_set"), "rows": measured}
                   if quality else "not measured",
        "limitations": [
            *([f"Partly trained: these weights are the state after {trained.get('steps')} of the {TRAIN_STEPS} "
               "steps its recipe plans (the run was paused); it has learned where sentences are and the "
               "command structure better than the words."] if int(trained.get("steps", 0)) < TRAIN_STEPS else []),
            "Only the command vocabulary of export/nano/corpus.py; other words come out as the nearest command.",
            "English espeak-ng voices only; real human speech is far outside what it heard.",
            "Plain transcription and sentence timestamps only; no questions, no word timestamps, no thinking.",
        ],
    }


def release(work_dir: Path, out: Path, quality_path: Path | None, threads: int | None = None,
            weights: Path = WEIGHTS_FILE) -> Path:
    from moss_audio_edge.quantize.bundle_quant import quantize_bundle  # the quantize extra

    float_bundle = build_float_bundle(work_dir, weights)
    quality = json.loads(quality_path.read_text()) if quality_path else None
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as staged:  # the previous release stays until this one is complete
        quantize_bundle(float_bundle, staged, threads=threads, log=lambda _: None, **SHIPPED_RECIPE)
        bundle = load_bundle(staged)
        write_manifest(staged, dataclasses.replace(bundle.manifest, model_card=model_card(quality, weights)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=EMBEDDED_BUNDLES["nano"])
    parser.add_argument("--quality", type=Path, default=None, help="benchmarks/results/nano_quality.json")
    parser.add_argument("--weights", type=Path, default=WEIGHTS_FILE)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    out = release(args.work_dir, args.out, args.quality, args.threads, args.weights)
    print(f"nano bundle written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
