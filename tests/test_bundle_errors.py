"""A broken bundle gives a clear BundleError, and `moss-edge run` exit code 3 with one line.

Each case copies the tiny k1 bundle and breaks one thing. Damage the manifest can reveal
(sizes, and hashes with --verify) must be caught by `load_bundle`, before llama.cpp or
onnxruntime see the file; what only loading reveals must still become a BundleError.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from cli_helpers import assert_one_line_error, moss_edge

from edge_runtime.bundle import BundleError, file_entry, load_bundle
from edge_runtime.transcribe import MossAudio

# --- ways to break a bundle ------------------------------------------------------------------

def _manifest(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text())


def _write_manifest(d: Path, manifest: dict) -> None:
    (d / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _update_llm_entry(d: Path) -> None:
    """Make the manifest describe the llm.gguf now in the bundle (so only loading can tell)."""
    manifest = _manifest(d)
    entry = file_entry(d, manifest["llm"]["path"], manifest["llm"]["dtype"])
    manifest["llm"].update(size=entry.size, sha256=entry.sha256)
    _write_manifest(d, manifest)


def _garbage(size: int, prefix: bytes = b"") -> bytes:
    return prefix + np.random.default_rng(size).bytes(size - len(prefix))


def missing_directory(d: Path, other: Path) -> None:
    shutil.rmtree(d)


def no_manifest(d: Path, other: Path) -> None:  # what an interrupted copy or export leaves
    (d / "manifest.json").unlink()


def manifest_not_json(d: Path, other: Path) -> None:
    (d / "manifest.json").write_text('{"format": "moss-audio-edge-bundle", "model": {')


def other_format_version(d: Path, other: Path) -> None:
    manifest = _manifest(d)
    manifest["format_version"] = 2
    _write_manifest(d, manifest)


def other_model_type(d: Path, other: Path) -> None:
    manifest = _manifest(d)
    manifest["model"]["model_type"] = "qwen2_audio"
    _write_manifest(d, manifest)


def truncated_gguf(d: Path, other: Path) -> None:
    path = d / "llm.gguf"
    os.truncate(path, path.stat().st_size // 2)


def random_gguf(d: Path, other: Path) -> None:
    path = d / "llm.gguf"
    path.write_bytes(_garbage(path.stat().st_size))


def random_gguf_with_magic(d: Path, other: Path) -> None:
    path = d / "llm.gguf"
    path.write_bytes(_garbage(path.stat().st_size, prefix=b"GGUF"))


def truncated_gguf_manifest_updated(d: Path, other: Path) -> None:
    truncated_gguf(d, other)
    _update_llm_entry(d)


def corrupt_onnx(d: Path, other: Path) -> None:
    path = d / "encoder.onnx"
    path.write_bytes(_garbage(path.stat().st_size))


def gguf_of_other_bundle(d: Path, other: Path) -> None:
    shutil.copyfile(other / "llm.gguf", d / "llm.gguf")
    _update_llm_entry(d)


@dataclass(frozen=True)
class Case:
    breaker: Callable[[Path, Path], None]
    verify: bool
    caught_by_load_bundle: bool  # False: the files pass the manifest checks, loading fails
    needles: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.breaker.__name__}{'-verify' if self.verify else ''}"


CASES = [
    Case(missing_directory, False, True, ("bundle directory not found",)),
    Case(no_manifest, False, True, ("no manifest.json", "interrupted export")),
    Case(manifest_not_json, False, True, ("manifest.json", "not valid JSON")),
    Case(other_format_version, False, True, ("manifest.json", "format version 2", "re-export")),
    Case(other_model_type, False, True, ("manifest.json", "'qwen2_audio'")),
    Case(truncated_gguf, False, True, ("llm.gguf", "manifest says", "truncated")),
    Case(random_gguf, True, True, ("llm.gguf", "sha256 differs")),
    Case(random_gguf, False, False, ("llm.gguf", "not a GGUF file")),
    Case(random_gguf_with_magic, True, True, ("llm.gguf", "sha256 differs")),
    Case(random_gguf_with_magic, False, False, ("llm.gguf", "llama.cpp could not load")),
    Case(truncated_gguf_manifest_updated, False, False, ("llm.gguf", "llama.cpp could not load")),
    Case(corrupt_onnx, True, True, ("encoder.onnx", "sha256 differs")),
    Case(corrupt_onnx, False, True, ("encoder.onnx", "cannot load the ONNX audio encoder")),
    Case(gguf_of_other_bundle, True, False, ("llm.gguf", "mismatched files")),
]


@pytest.fixture
def bundle(tiny_bundles: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the tiny k1 bundle, free to break."""
    return Path(shutil.copytree(tiny_bundles["k1"], tmp_path / "bundle"))


def test_the_copy_is_a_valid_bundle(bundle: Path, speech_wav: Path):
    """Every failure below is caused by its breakage, not by the copy."""
    MossAudio(load_bundle(bundle, verify_hashes=True), threads=1, n_ctx=512)
    result = moss_edge("run", str(bundle), "--audio", str(speech_wav), "--json",
                       "--max-tokens", "2", "--verify", "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["token_ids"]) == 2


@pytest.mark.parametrize("case", CASES, ids=str)
def test_broken_bundle_is_refused_with_a_clear_error(case: Case, bundle: Path, tiny_bundles, speech_wav):
    case.breaker(bundle, tiny_bundles["k2"])

    if case.caught_by_load_bundle:
        with pytest.raises(BundleError) as caught:
            load_bundle(bundle, verify_hashes=case.verify)
    else:
        load_bundle(bundle, verify_hashes=case.verify)  # passes: only loading the file can tell
        with pytest.raises(BundleError) as caught:
            MossAudio(bundle, threads=1, n_ctx=512, verify_hashes=case.verify)
    for needle in case.needles:
        assert needle in str(caught.value), (needle, str(caught.value))

    args = ["run", str(bundle), "--audio", str(speech_wav), "--json", "--max-tokens", "2"]
    assert_one_line_error(moss_edge(*args, *(["--verify"] if case.verify else [])), list(case.needles))


def test_tiny_bundles_have_equal_row_widths_but_differ(tiny_bundles: dict[str, Path]):
    """Why gguf_of_other_bundle needs more than the row-width check to be refused."""
    k1, k2 = (load_bundle(tiny_bundles[n]).manifest.model for n in ("k1", "k2"))
    assert k1.row_width == k2.row_width
    assert k1.hidden_size != k2.hidden_size


def test_info_prints_the_manifest(tiny_bundles: dict[str, Path]):
    result = moss_edge("info", str(tiny_bundles["k1"]))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads((tiny_bundles["k1"] / "manifest.json").read_text())


def test_info_on_a_broken_bundle_is_a_one_line_error(bundle: Path):
    random_gguf(bundle, bundle)
    assert moss_edge("info", str(bundle)).returncode == 0  # sizes match: info reads no model
    assert_one_line_error(moss_edge("info", str(bundle), "--verify"), ["llm.gguf", "sha256 differs"])
    no_manifest(bundle, bundle)
    assert_one_line_error(moss_edge("info", str(bundle)), ["no manifest.json"])
