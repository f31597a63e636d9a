"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from moss_audio_edge.export.tokenizer_writer import write_tokenizer_files


@pytest.fixture(scope="session")
def tokenizer_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pass as `cache_dir` to write_tokenizer_files so the files are generated once."""
    return tmp_path_factory.mktemp("tokenizer-cache")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_cache_dir: Path) -> Path:
    """A directory holding only the MOSS-Audio tokenizer files (read-only by convention)."""
    out = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer_files(out, cache_dir=tokenizer_cache_dir)
    return out


# --- tiny random MOSS-Audio checkpoints, exported once per session ------------------------

import numpy as np  # noqa: E402

from edge_runtime.audio import load_audio  # noqa: E402
from moss_audio_edge.export.bundle_export import export_bundle  # noqa: E402
from moss_audio_edge.export.checkpoint_writer import config_with  # noqa: E402
from edge_runtime.speech import SAMPLE_TEXT, speak  # noqa: E402
from tests.fixtures.checkpoints import write_random_checkpoint  # noqa: E402

# Two shapes that differ in every dimension the export maps: encoder width, heads, layers,
# DeepStack indexes and K (2 of 2, and 1 of 2 via deepstack_num_inject_layers), LLM width,
# head_dim (so the rope sections differ) and GQA ratio.
TINY_CONFIGS = {
    "k2": config_with(
        audio=dict(d_model=64, output_dim=64, encoder_layers=4, encoder_attention_heads=4,
                   encoder_ffn_dim=128, downsample_hidden_size=16, deepstack_encoder_layer_indexes=[1, 2]),
        language=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=32),
        adapter_hidden_size=96, deepstack_num_inject_layers=3),
    "k1": config_with(
        audio=dict(d_model=48, output_dim=48, encoder_layers=3, encoder_attention_heads=3,
                   encoder_ffn_dim=96, downsample_hidden_size=8, deepstack_encoder_layer_indexes=[0, 2]),
        language=dict(hidden_size=96, intermediate_size=160, num_hidden_layers=2, num_attention_heads=6,
                      num_key_value_heads=3, head_dim=16),
        adapter_hidden_size=80, deepstack_num_inject_layers=1),
}


@pytest.fixture(scope="session", params=sorted(TINY_CONFIGS))
def tiny_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory, tokenizer_cache_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {name: write_random_checkpoint(root / name, config, seed=i, tokenizer_cache=tokenizer_cache_dir)
            for i, (name, config) in enumerate(sorted(TINY_CONFIGS.items()))}


@pytest.fixture(scope="session")
def tiny_bundles(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoints: dict[str, Path]) -> dict[str, Path]:
    """F32 GGUF bundles: the parity tests compare them with the fp32 reference."""
    root = tmp_path_factory.mktemp("bundles")
    return {name: export_bundle(path, root / name, llm_type="F32", log=lambda _: None)
            for name, path in tiny_checkpoints.items()}


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~25 s of espeak-ng speech: 7 encoder chunks and two-digit time markers."""
    path = speak(SAMPLE_TEXT, tmp_path_factory.mktemp("speech") / "speech.wav")
    seconds = len(load_audio(path)) / 16000
    assert 20.0 < seconds < 28.0, f"speech clip is {seconds:.1f} s; the tests need 20-28 s"
    return path


@pytest.fixture(scope="session")
def speech(speech_wav: Path) -> np.ndarray:
    return load_audio(speech_wav)
