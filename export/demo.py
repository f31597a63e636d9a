"""`moss-edge demo`: the embedded default, end to end on a fresh machine.

Builds a tiny random-weight MOSS-Audio checkpoint in the real layout, exports it to a
bundle, speaks a clip with espeak-ng and runs the bundle on it with the sentence-timestamp
prompt. The weights are random, so the words are meaningless: the demo shows the whole
pipeline running, not a transcript. (A trained nano model is to replace it.)
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from edge_runtime.prompt import SENTENCE_TIMESTAMPS
from edge_runtime.transcribe import MossAudio

from .bundle_export import export_bundle
from .synthetic_checkpoint import config_with, write_random_checkpoint
from .synthetic_speech import SAMPLE_TEXT, speak

DEMO_CONFIG = config_with(
    audio=dict(d_model=64, output_dim=64, encoder_layers=4, encoder_attention_heads=4, encoder_ffn_dim=128,
               downsample_hidden_size=16, deepstack_encoder_layer_indexes=[1, 2]),
    language=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32),
    adapter_hidden_size=96)


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "moss-audio-edge" / "demo"


def demo_bundle(cache_dir: Path) -> Path:
    bundle = cache_dir / "bundle"
    if not (bundle / "manifest.json").exists():
        shutil.rmtree(bundle, ignore_errors=True)
        checkpoint = write_random_checkpoint(cache_dir / "checkpoint", DEMO_CONFIG, seed=0)
        export_bundle(checkpoint, bundle, llm_type="F32", log=lambda line: print(f"  {line}"))
        shutil.rmtree(checkpoint)
    return bundle


def run_demo(cache_dir: Path | None = None, threads: int | None = None) -> int:
    cache_dir = cache_dir or default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    print(f"1. tiny random-weight MOSS-Audio bundle in {cache_dir / 'bundle'}")
    bundle = demo_bundle(cache_dir)
    print("2. speech clip from espeak-ng:")
    print(f"   \"{SAMPLE_TEXT}\"")
    wav = speak(SAMPLE_TEXT, cache_dir / "speech.wav")
    print("3. running the bundle (ONNX encoder + llama.cpp) with the sentence-timestamp prompt")
    model = MossAudio(bundle, threads=threads)
    result = model.generate(wav, SENTENCE_TIMESTAMPS, max_new_tokens=48)
    t = result.timings
    print(f"   audio {result.audio_seconds:.1f} s -> {result.audio_tokens} audio tokens, "
          f"prompt {result.prompt_tokens} tokens; encode {t['encode_s']:.2f} s, prefill {t['prefill_s']:.2f} s, "
          f"decode {len(result.token_ids)} tokens in {t['decode_s']:.2f} s")
    print("   output (random weights, so meaningless words):")
    print(f"   {result.text!r}")
    return 0
