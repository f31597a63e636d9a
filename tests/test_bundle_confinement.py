"""A bundle's files must lie inside its directory (docs/reliability.md#confined-bundles).

Each case copies the embedded nano bundle and crafts one way out: an absolute path, `..`, a
symlink leading out, an ONNX external-data reference leading out or not listed in the
manifest. The file outside is a real copy of the bundle's own, with the right size, so that
only the confinement check can refuse it. Legitimate layouts (symlinks inside the bundle, an
encoder with its weights in an external-data file) still load and run.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import onnx
import pytest
from cli_helpers import assert_one_line_error, moss_edge

from edge_runtime.audio import load_audio
from edge_runtime.bundle import EMBEDDED_BUNDLES, BundleError, file_entry, load_bundle
from edge_runtime.speech import speak
from edge_runtime.transcribe import MossAudio
from moss_audio_edge.quantize.bundle_quant import quantize_bundle

DATA = "encoder.onnx.data"
LEAVES = "must lie inside its directory"


def _manifest(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text())


def _write_manifest(d: Path, manifest: dict) -> None:
    (d / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _describe(d: Path, key: str, path: str, extra_files: tuple[str, ...] = ()) -> None:
    """Point the manifest's `key` entry at `path` (relative to `d`, or absolute) with the right
    size and hash, so that nothing but the path itself is wrong."""
    manifest = _manifest(d)
    entry = file_entry(d, path, manifest[key]["dtype"], extra_files)
    manifest[key].update(path=path, size=entry.size, sha256=entry.sha256, extra_files=list(extra_files))
    _write_manifest(d, manifest)


def _with_external_data(d: Path) -> None:
    """Re-save the encoder with its weights in encoder.onnx.data, as export does past 2 GB."""
    model = onnx.load(str(d / "encoder.onnx"))
    onnx.save_model(model, str(d / "encoder.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=DATA, size_threshold=1024)
    _describe(d, "encoder", "encoder.onnx", (DATA,))


def _point_external_data(d: Path, location: str, extra_files: tuple[str, ...]) -> None:
    """Rewrite every external-data `location` in the encoder (the weights stay where they are)."""
    model = onnx.load(str(d / "encoder.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, str(d / "encoder.onnx"))
    _describe(d, "encoder", "encoder.onnx", extra_files)


# --- ways out -----------------------------------------------------------------------------------

def absolute_llm_path(d: Path, outside: Path) -> None:
    shutil.copyfile(d / "llm.gguf", outside / "llm.gguf")
    _describe(d, "llm", str(outside / "llm.gguf"))


def dotdot_llm_path(d: Path, outside: Path) -> None:
    shutil.copyfile(d / "llm.gguf", outside / "llm.gguf")
    _describe(d, "llm", f"../{outside.name}/llm.gguf")


def dotdot_inside_a_subfolder(d: Path, outside: Path) -> None:
    (d / "sub").mkdir()
    shutil.copyfile(d / "llm.gguf", outside / "llm.gguf")
    _describe(d, "llm", f"sub/../../{outside.name}/llm.gguf")


def symlinked_llm(d: Path, outside: Path) -> None:
    shutil.move(d / "llm.gguf", outside / "llm.gguf")
    (d / "llm.gguf").symlink_to(outside / "llm.gguf")


def symlinked_folder(d: Path, outside: Path) -> None:
    shutil.move(d / "llm.gguf", outside / "llm.gguf")
    (d / "weights").symlink_to(outside)
    _describe(d, "llm", "weights/llm.gguf")


def symlinked_manifest(d: Path, outside: Path) -> None:
    shutil.move(d / "manifest.json", outside / "manifest.json")
    (d / "manifest.json").symlink_to(outside / "manifest.json")


def dotdot_extra_file(d: Path, outside: Path) -> None:
    _with_external_data(d)
    shutil.move(d / DATA, outside / DATA)
    _point_external_data(d, DATA, (f"../{outside.name}/{DATA}",))


def external_data_dotdot(d: Path, outside: Path) -> None:
    _with_external_data(d)
    shutil.move(d / DATA, outside / DATA)
    _point_external_data(d, f"../{outside.name}/{DATA}", ())


def external_data_absolute(d: Path, outside: Path) -> None:
    _with_external_data(d)
    shutil.move(d / DATA, outside / DATA)
    _point_external_data(d, str(outside / DATA), ())


def external_data_symlink(d: Path, outside: Path) -> None:
    _with_external_data(d)
    shutil.move(d / DATA, outside / DATA)
    (d / DATA).symlink_to(outside / DATA)


def external_data_unlisted(d: Path, outside: Path) -> None:
    _with_external_data(d)
    _point_external_data(d, DATA, ())  # the weights are inside, but no size or hash covers them


CASES: list[tuple[Callable[[Path, Path], None], tuple[str, ...]]] = [
    (absolute_llm_path, ("LLM file path", "is absolute", LEAVES)),
    (dotdot_llm_path, ("LLM file path", "goes up with '..'", LEAVES)),
    (dotdot_inside_a_subfolder, ("LLM file path", "goes up with '..'", LEAVES)),
    (symlinked_llm, ("LLM file path 'llm.gguf'", "outside the bundle", LEAVES)),
    (symlinked_folder, ("LLM file path 'weights/llm.gguf'", "outside the bundle", LEAVES)),
    (symlinked_manifest, ("manifest path", "outside the bundle", LEAVES)),
    (dotdot_extra_file, ("audio encoder file path", "goes up with '..'", LEAVES)),
    (external_data_dotdot, ("external data", "goes up with '..'", LEAVES)),
    (external_data_absolute, ("external data", "is absolute", LEAVES)),
    (external_data_symlink, (f"audio encoder file path '{DATA}'", "outside the bundle", LEAVES)),
    (external_data_unlisted, (f"external data file '{DATA}'", "not listed in the manifest")),
]


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A private copy of the nano bundle, free to craft."""
    return Path(shutil.copytree(EMBEDDED_BUNDLES["nano"], tmp_path / "bundle"))


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    (tmp_path / "outside").mkdir()
    return tmp_path / "outside"


@pytest.mark.parametrize("craft, needles", CASES, ids=[c.__name__ for c, _ in CASES])
def test_a_path_out_of_the_bundle_is_refused(craft, needles, bundle: Path, outside: Path):
    craft(bundle, outside)
    with pytest.raises(BundleError) as caught:
        load_bundle(bundle)
    for needle in needles:
        assert needle in str(caught.value), (needle, str(caught.value))
    with pytest.raises(BundleError):  # every way of opening a bundle goes through load_bundle
        MossAudio(bundle, threads=1, n_ctx=512)
    assert_one_line_error(moss_edge("info", str(bundle)), list(needles))


def test_quantize_never_writes_outside_through_a_crafted_path(bundle: Path, outside: Path, tmp_path: Path):
    """quantize writes the LLM under the source manifest's own file name: a name leading out
    must be refused before anything is written."""
    dotdot_llm_path(bundle, outside)
    before = sorted(p.name for p in outside.iterdir())
    with pytest.raises(BundleError, match="goes up with '..'"):
        quantize_bundle(bundle, tmp_path / "quantized", encoder="int4", llm="Q4_K_M", log=lambda _: None)
    assert sorted(p.name for p in outside.iterdir()) == before
    assert not (tmp_path / "quantized").exists()


def test_symlinks_inside_the_bundle_are_fine(bundle: Path, tmp_path: Path):
    """A bundle that stores its files under other names inside itself (a cache layout), and a
    bundle directory reached through a symlink, still load."""
    (bundle / "blobs").mkdir()
    shutil.move(bundle / "llm.gguf", bundle / "blobs" / "0123abcd")
    (bundle / "llm.gguf").symlink_to(Path("blobs") / "0123abcd")
    (tmp_path / "current").symlink_to(bundle)
    assert load_bundle(tmp_path / "current", verify_hashes=True).llm_path == tmp_path / "current" / "llm.gguf"


def test_an_encoder_with_external_data_inside_loads_and_runs(bundle: Path, tmp_path: Path):
    """The reference walker accepts what onnx writes for a large encoder, and the bundle runs
    exactly as the original does."""
    _with_external_data(bundle)
    assert (bundle / DATA).stat().st_size > (bundle / "encoder.onnx").stat().st_size  # the weights moved
    clip = load_audio(speak("Turn on the lights.", tmp_path / "clip.wav"))
    original = MossAudio("nano", threads=1)
    moved = MossAudio(load_bundle(bundle, verify_hashes=True), threads=1)
    assert original.engine.encode(clip).tolist() == moved.engine.encode(clip).tolist()
    assert [s.text for s in moved.transcribe(clip)[0]] == [s.text for s in original.transcribe(clip)[0]]


def test_a_file_that_is_not_onnx_is_refused_before_onnxruntime(bundle: Path):
    (bundle / "encoder.onnx").write_bytes(b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01" + os.urandom(64))
    _describe(bundle, "encoder", "encoder.onnx")
    with pytest.raises(BundleError, match="cannot load the ONNX audio encoder .not an ONNX model"):
        load_bundle(bundle)
