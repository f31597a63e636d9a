"""A bad checkpoint or output directory gives a clear error and leaves nothing half-written.

Each case copies the tiny k1 checkpoint, breaks one thing and checks that `Checkpoint`,
`export_bundle` and `moss-edge export` (run as a user runs it) all refuse with a message
naming the file and/or tensor, and that neither the output nor a staging directory is left.
The positive cases check the checkpoint variants that must keep working.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from cli_helpers import moss_edge
from safetensors.torch import load_file, save_file

import moss_audio_edge.export.bundle_export as bundle_export
from edge_runtime.bundle import load_bundle, sha256_of
from edge_runtime.errors import InputError
from edge_runtime.transcribe import MossAudio
from moss_audio_edge.export.bundle_export import export_bundle
from moss_audio_edge.export.checkpoint import Checkpoint, CheckpointError, expected_tensor_shapes, parse_config
from moss_audio_edge.export.checkpoint_writer import PUBLISHED_4B_CONFIG, config_with

INDEX = "model.safetensors.index.json"
NORM = "language_model.norm.weight"  # a small tensor (hidden_size floats) to break


def run_export(checkpoint: Path, out: Path) -> subprocess.CompletedProcess:
    return moss_edge("export", str(checkpoint), str(out))


def assert_bad_input(result: subprocess.CompletedProcess, needles: list[str]) -> None:
    """Exit code 3, no traceback, and the last stderr line is one `error:` naming the problem."""
    assert result.returncode == 3, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert sum(line.startswith("error:") for line in lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])


def assert_nothing_written(out: Path) -> None:
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    assert list(out.parent.glob(f".{out.name}.partial-*")) == []


# --- ways to break a checkpoint: each returns what the error message must mention -------

def _config(directory: Path, change: Callable[[dict], None]) -> None:
    config = json.loads((directory / "config.json").read_text())
    change(config)
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def _index(directory: Path) -> dict:
    return json.loads((directory / INDEX).read_text())


def _rewrite_shard(directory: Path, tensor: str, change: Callable[[dict], None]) -> str:
    """Rewrite the shard holding `tensor` with `change` applied to its tensors; returns its name."""
    shard = _index(directory)["weight_map"][tensor]
    tensors = load_file(str(directory / shard))
    change(tensors)
    save_file(tensors, str(directory / shard), metadata={"format": "pt"})
    return shard


def not_a_checkpoint_empty(d: Path) -> list[str]:
    shutil.rmtree(d)
    d.mkdir()
    return ["config.json", "missing", "not a MOSS-Audio checkpoint"]


def not_a_checkpoint_unrelated(d: Path) -> list[str]:
    shutil.rmtree(d)
    d.mkdir()
    (d / "README.md").write_text("holiday photos\n")
    (d / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(100))
    return ["config.json", "missing", "not a MOSS-Audio checkpoint"]


def config_not_json(d: Path) -> list[str]:
    (d / "config.json").write_text('{"model_type": "moss_audio", ')
    return ["config.json", "not valid JSON"]


def wrong_model_type(d: Path) -> list[str]:
    _config(d, lambda c: c.update(model_type="qwen2_audio"))
    return ["config.json", "model_type='qwen2_audio'"]


def missing_shard(d: Path) -> list[str]:
    shard = _index(d)["weight_map"][NORM]
    (d / shard).unlink()
    return [shard, "missing"]


def truncated_shard(d: Path) -> list[str]:
    shard = d / _index(d)["weight_map"][NORM]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    return [shard.name, "truncated"]


def tensor_missing_from_index(d: Path) -> list[str]:
    index = _index(d)
    del index["weight_map"][NORM]
    (d / INDEX).write_text(json.dumps(index))
    return ["missing tensor", NORM]


def tensor_missing_from_shard(d: Path) -> list[str]:
    shard = _rewrite_shard(d, NORM, lambda t: t.pop(NORM))
    return [shard, NORM]


def tensor_wrong_shape(d: Path) -> list[str]:
    def reshape(tensors: dict) -> None:
        tensors[NORM] = tensors[NORM].reshape(2, -1).contiguous()
    shard = _rewrite_shard(d, NORM, reshape)
    return [shard, NORM, "shape [2, 48]", "[96]"]


def extra_unknown_tensor(d: Path) -> list[str]:
    name = "language_model.layers.0.mlp.bias"

    def add(tensors: dict) -> None:
        tensors[name] = torch.zeros(160, dtype=torch.bfloat16)
    shard = _rewrite_shard(d, NORM, add)
    index = _index(d)
    index["weight_map"][name] = shard
    (d / INDEX).write_text(json.dumps(index))
    return [shard, name, "unexpected tensor"]


def unknown_audio_field(d: Path) -> list[str]:
    _config(d, lambda c: c["audio_config"].update(use_relative_positions=True))
    return ["config.json", "audio_config.use_relative_positions", "unknown field"]


def unknown_language_field(d: Path) -> list[str]:
    _config(d, lambda c: c["language_config"].update(some_new_field=2))
    return ["config.json", "language_config.some_new_field", "unknown field"]


def non_gelu_activation(d: Path) -> list[str]:
    _config(d, lambda c: c["audio_config"].update(activation_function="relu"))
    return ["config.json", "activation_function='relu'", "gelu"]


def different_mel_config(d: Path) -> list[str]:
    processor = json.loads((d / "processor_config.json").read_text())
    processor["mel_config"]["mel_dim"] = 80
    (d / "processor_config.json").write_text(json.dumps(processor))
    return ["processor_config.json", "mel_config", "'mel_dim': 80"]


def missing_vocab(d: Path) -> list[str]:
    (d / "vocab.json").unlink()
    return ["vocab.json", "tokenizer file missing"]


BREAKERS = [not_a_checkpoint_empty, not_a_checkpoint_unrelated, config_not_json, wrong_model_type,
            missing_shard, truncated_shard, tensor_missing_from_index, tensor_missing_from_shard,
            tensor_wrong_shape, extra_unknown_tensor, unknown_audio_field, unknown_language_field,
            non_gelu_activation, different_mel_config, missing_vocab]


@pytest.fixture
def checkpoint(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the tiny k1 checkpoint, free to break."""
    return Path(shutil.copytree(tiny_checkpoints["k1"], tmp_path / "checkpoint"))


def test_the_copy_is_a_valid_checkpoint(checkpoint: Path):
    """Every failure below is caused by its breakage, not by the copy."""
    assert len(Checkpoint(checkpoint).tensor_names) > 0


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__)
def test_broken_checkpoint_is_refused_and_nothing_is_written(checkpoint: Path, tmp_path: Path,
                                                             breaker: Callable[[Path], list[str]]):
    needles = breaker(checkpoint)
    with pytest.raises(CheckpointError) as caught:
        Checkpoint(checkpoint)
    for needle in needles:
        assert needle in str(caught.value), (needle, str(caught.value))

    out = tmp_path / "bundle"
    with pytest.raises(CheckpointError):
        export_bundle(checkpoint, out, log=lambda _: None)
    assert_nothing_written(out)

    assert_bad_input(run_export(checkpoint, out), needles)
    assert_nothing_written(out)


def test_nonempty_output_directory_is_refused_and_untouched(checkpoint: Path, tmp_path: Path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "notes.txt").write_text("mine, do not delete\n")
    with pytest.raises(InputError, match="not empty"):
        export_bundle(checkpoint, out, log=lambda _: None)
    assert_bad_input(run_export(checkpoint, out), [str(out), "not empty"])
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine, do not delete\n"
    assert list(tmp_path.glob(".bundle.partial-*")) == []


@pytest.mark.parametrize("interruption", [RuntimeError("disk full"), KeyboardInterrupt()],
                         ids=["error", "ctrl-c"])
def test_interrupted_export_leaves_no_output_and_no_staging(checkpoint: Path, tmp_path: Path,
                                                            monkeypatch, interruption: BaseException):
    staged: list[Path] = []

    def half_written_gguf(ckpt, path: Path, llm_type: str) -> None:
        path.write_bytes(b"GGUF" + bytes(1000))  # a partial file, as a crash would leave it
        staged.append(path.parent)
        raise interruption

    monkeypatch.setattr(bundle_export, "export_llm_gguf", half_written_gguf)
    out = tmp_path / "bundle"
    with pytest.raises(type(interruption)):
        export_bundle(checkpoint, out, log=lambda _: None)
    assert len(staged) == 1 and staged[0].name.startswith(".bundle.partial-")  # it got that far
    assert not staged[0].exists()
    assert_nothing_written(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


# --- what must keep working ----------------------------------------------------------------

def test_moss_music_checkpoint_with_inv_timescales_exports(checkpoint: Path, tmp_path: Path,
                                                           tiny_bundles: dict[str, Path], speech):
    _config(checkpoint, lambda c: c.update(model_type="moss_music"))
    name = "audio_encoder.embed_positions.inv_timescales"
    # garbage values: the positions are computed from the config, this tensor must not be read
    shard = _rewrite_shard(checkpoint, NORM,
                           lambda t: t.update({name: torch.full((24,), 7.0, dtype=torch.float32)}))
    index = _index(checkpoint)
    index["weight_map"][name] = shard
    (checkpoint / INDEX).write_text(json.dumps(index))

    assert Checkpoint(checkpoint).config.model_type == "moss_music"
    out = export_bundle(checkpoint, tmp_path / "music", llm_type="F32", log=lambda _: None)
    assert load_bundle(out, verify_hashes=True).manifest.model.model_type == "moss_music"
    music = MossAudio(out, threads=1, n_ctx=256)  # the GGUF's model type matches its manifest
    audio = MossAudio(tiny_bundles["k1"], threads=1, n_ctx=256)
    clip = speech[: 16000 * 5]
    np.testing.assert_array_equal(music.engine.encode(clip), audio.engine.encode(clip))


def test_single_file_checkpoint_without_index_exports(checkpoint: Path, tmp_path: Path,
                                                      tiny_bundles: dict[str, Path]):
    sharded = Checkpoint(checkpoint)
    lm_head = sharded.numpy("lm_head.weight")
    shards = sorted(set(_index(checkpoint)["weight_map"].values()))
    assert len(shards) > 1
    merged: dict[str, torch.Tensor] = {}
    for shard in shards:
        merged.update(load_file(str(checkpoint / shard)))
        (checkpoint / shard).unlink()
    (checkpoint / INDEX).unlink()
    save_file(merged, str(checkpoint / "model.safetensors"), metadata={"format": "pt"})
    del merged

    single = Checkpoint(checkpoint)
    assert single.tensor_names == sharded.tensor_names
    np.testing.assert_array_equal(single.numpy("lm_head.weight"), lm_head)
    out = tmp_path / "bundle"
    out.mkdir()  # an existing empty directory is an acceptable target
    export_bundle(checkpoint, out, llm_type="F32", log=lambda _: None)
    # same weights, same config: the same GGUF as the sharded checkpoint's bundle
    reference = load_bundle(tiny_bundles["k1"]).manifest.llm
    assert load_bundle(out).manifest.llm.sha256 == reference.sha256
    assert sha256_of(out / "llm.gguf") == sha256_of(tiny_bundles["k1"] / "llm.gguf")


def test_published_4b_config_expects_901_tensors():
    cfg = parse_config(PUBLISHED_4B_CONFIG)
    shapes = expected_tensor_shapes(cfg)
    assert len(shapes) == 901
    assert cfg.num_deepstack == 3
    assert shapes["audio_encoder.conv1.weight"] == (480, 1, 3, 3)
    assert shapes["audio_encoder.conv3.weight"] == (480, 480, 3, 3)
    assert shapes["audio_encoder.stem_proj.weight"] == (1280, 480 * 16)
    assert shapes["audio_encoder.layers.31.fc1.weight"] == (5120, 1280)
    assert "audio_encoder.layers.0.self_attn.k_proj.bias" not in shapes
    assert "audio_encoder.layers.0.self_attn.q_proj.bias" in shapes
    assert "audio_encoder.out_proj.weight" not in shapes  # identity: output_dim == d_model
    assert shapes["audio_adapter.gate_proj.weight"] == (8192, 1280)
    assert shapes["deepstack_audio_merger_list.2.down_proj.weight"] == (2560, 8192)
    assert "deepstack_audio_merger_list.3.down_proj.weight" not in shapes
    assert shapes["language_model.layers.35.self_attn.k_proj.weight"] == (8 * 128, 2560)
    assert shapes["language_model.layers.35.self_attn.q_norm.weight"] == (128,)
    assert shapes["lm_head.weight"] == (151936, 2560)


def test_8b_config_parses_with_its_shapes():
    shapes_4b = expected_tensor_shapes(parse_config(PUBLISHED_4B_CONFIG))
    cfg = parse_config(config_with(language=dict(hidden_size=4096, intermediate_size=12288)))
    shapes = expected_tensor_shapes(cfg)
    assert cfg.language.hidden_size == 4096 and cfg.language.intermediate_size == 12288
    assert len(shapes) == 901 and shapes.keys() == shapes_4b.keys()
    assert shapes["language_model.embed_tokens.weight"] == (151936, 4096)
    assert shapes["lm_head.weight"] == (151936, 4096)
    assert shapes["language_model.layers.0.self_attn.q_proj.weight"] == (32 * 128, 4096)
    assert shapes["language_model.layers.0.self_attn.k_proj.weight"] == (8 * 128, 4096)
    assert shapes["language_model.layers.0.self_attn.o_proj.weight"] == (4096, 32 * 128)
    assert shapes["language_model.layers.35.mlp.gate_proj.weight"] == (12288, 4096)
    assert shapes["language_model.layers.35.mlp.down_proj.weight"] == (4096, 12288)
    assert shapes["audio_adapter.down_proj.weight"] == (4096, 8192)
    assert shapes["deepstack_audio_merger_list.0.down_proj.weight"] == (4096, 8192)
    # the audio encoder is the same model
    audio = [n for n in shapes if n.startswith("audio_encoder.")]
    assert len(audio) == 490
    assert all(shapes[n] == shapes_4b[n] for n in audio)
