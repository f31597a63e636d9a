"""The bundle manifest: the one contract between export, quantize and the runtime.

A bundle is a directory holding `manifest.json`, the ONNX audio encoder and the GGUF LLM.
The manifest is always written last and atomically, so a directory without one (an
interrupted export) never loads as a bundle.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, get_args, get_origin, get_type_hints

from .errors import InputError
from .onnx_external import MalformedOnnx, external_locations
from .staging import write_atomic

MANIFEST_NAME = "manifest.json"
BUNDLE_FORMAT = "moss-audio-edge-bundle"
FORMAT_VERSION = 1
SUPPORTED_MODEL_TYPES = ("moss_audio", "moss_music")
# Project keys in the GGUF's metadata, written by export; the runtime checks the model type
# against the manifest to refuse a GGUF that is not this bundle's.
GGUF_FORMAT_KEY = "moss_audio_edge.format_version"
GGUF_MODEL_TYPE_KEY = "moss_audio_edge.model_type"
GGUF_CONFIG_SHA256_KEY = "moss_audio_edge.source_config_sha256"
GGUF_FORMAT_VERSION = 1
# Bundles shipped inside the package, usable by name wherever a bundle directory is asked for.
EMBEDDED_BUNDLES = {"nano": Path(__file__).parent / "models" / "nano"}
BUNDLE_HELP = "bundle directory, or `nano` for the embedded nano model"


def bundle_path(name_or_dir: str | Path) -> Path:
    """A bundle directory, or the name of an embedded bundle when no such directory exists."""
    path = Path(name_or_dir)
    if not path.exists() and str(name_or_dir) in EMBEDDED_BUNDLES:
        return EMBEDDED_BUNDLES[str(name_or_dir)]
    return path


class BundleError(InputError):
    """The directory is not a bundle this runtime can run; the message says why."""


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str
    dtype: str  # e.g. fp32 / int8 for ONNX, F32 / Q4_K_M for GGUF
    extra_files: tuple[str, ...] = ()  # ONNX external data


@dataclass(frozen=True)
class AudioParams:
    sample_rate: int
    n_mels: int
    n_fft: int
    hop_length: int
    chunk_frames: int  # mel frames per independently encoded chunk (4 s)
    tokens_per_chunk: int

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_per_chunk * self.sample_rate / (self.chunk_frames * self.hop_length)


@dataclass(frozen=True)
class TokenIds:
    audio: int  # placeholder replaced by encoder rows
    audio_start: int
    audio_end: int
    im_start: int
    im_end: int
    endoftext: int
    digits: tuple[int, ...]  # ids of '0'..'9', used for time markers
    stop: tuple[int, ...]


@dataclass(frozen=True)
class TimeMarkers:
    enabled: bool
    every_tokens: int  # one marker after each complete group of this many audio tokens
    seconds_per_marker: int


@dataclass(frozen=True)
class ModelInfo:
    model_type: str
    source_config_sha256: str
    hidden_size: int
    num_deepstack: int
    vocab_size: int
    context_length: int

    @property
    def row_width(self) -> int:
        """Floats per audio row: adapter output then K DeepStack vectors."""
        return self.hidden_size * (1 + self.num_deepstack)


@dataclass(frozen=True)
class Manifest:
    model: ModelInfo
    audio: AudioParams
    tokens: TokenIds
    time_markers: TimeMarkers
    encoder: FileEntry
    llm: FileEntry
    system_prompt: str = "You are a helpful assistant."
    parity: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)
    model_card: dict[str, Any] = field(default_factory=dict)
    created_by: str = "moss-audio-edge"
    format: str = BUNDLE_FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Any) -> "Manifest":
        """The manifest in `data` (parsed JSON); a BundleError names the first field that is
        missing, unknown or of the wrong type."""
        return _from_json(cls, data, "manifest")


def _from_json(cls: type, data: Any, where: str) -> Any:
    """An instance of the dataclass `cls` from JSON, every field type-checked (JSON lists
    become the tuples the dataclasses hold), so a hand-edited or hostile manifest fails here
    with its field named instead of somewhere deep in loading."""
    if not isinstance(data, dict):
        raise BundleError(f"{where} must be an object, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(str(k) for k in data.keys() - known.keys())
    if unknown:
        raise BundleError(f"{where}: unknown field(s) {', '.join(unknown)}")
    missing = [name for name, f in known.items() if name not in data
               and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise BundleError(f"{where}: missing field(s) {', '.join(missing)}")
    return cls(**{name: _typed(hints[name], value, f"{where}.{name}") for name, value in data.items()})


def _typed(hint: Any, value: Any, where: str) -> Any:
    if is_dataclass(hint):
        return _from_json(hint, value, where)
    if get_origin(hint) is tuple:  # tuple[X, ...]
        item = get_args(hint)[0]
        if not isinstance(value, list):
            raise BundleError(f"{where} must be a list, got {type(value).__name__}")
        return tuple(_typed(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    expected = get_origin(hint) or hint  # dict[str, Any] -> dict
    # bool is an int in Python, not in a manifest
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise BundleError(f"{where} must be {expected.__name__}, got {type(value).__name__}")
    return value


def sha256_of(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(directory: Path, name: str, dtype: str, extra_files: tuple[str, ...] = ()) -> FileEntry:
    """Describe a file already in `directory` (size and hash cover the extra files too)."""
    digest = hashlib.sha256()
    size = 0
    for part in (name, *extra_files):
        digest.update(sha256_of(directory / part).encode())
        size += (directory / part).stat().st_size
    return FileEntry(path=name, size=size, sha256=digest.hexdigest(), dtype=dtype, extra_files=extra_files)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Atomically: a reader sees either no manifest or the whole of it."""
    write_atomic(directory / MANIFEST_NAME, manifest.to_json())


@dataclass(frozen=True)
class Bundle:
    directory: Path
    manifest: Manifest

    @property
    def encoder_path(self) -> Path:
        return self.directory / self.manifest.encoder.path

    @property
    def llm_path(self) -> Path:
        return self.directory / self.manifest.llm.path


def confined(root: Path, relative: str, what: str) -> Path:
    """`root / relative`, refused unless it names a path inside the bundle directory: relative,
    without `..`, and not leading out through a symlink (docs/reliability.md#confined-bundles).
    Checked before the file is opened, so a downloaded bundle cannot make the runtime read
    (or quantize write) anything outside its directory."""
    def refuse(reason: str) -> BundleError:
        return BundleError(f"{root / MANIFEST_NAME}: {what} path {relative!r} {reason}; a bundle's files "
                           "must lie inside its directory")
    if not relative or "\0" in relative:
        raise refuse("is not a file name")
    posix, windows = PurePosixPath(relative), PureWindowsPath(relative)
    if posix.is_absolute() or windows.is_absolute() or windows.drive:
        raise refuse("is absolute")
    if ".." in posix.parts or ".." in windows.parts:
        raise refuse("goes up with '..'")
    path = root / relative
    try:
        inside, target = root.resolve(), path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
        raise refuse(f"cannot be resolved ({exc})") from None
    if target == inside:
        raise refuse("names the bundle directory itself")
    if inside not in target.parents:
        raise refuse(f"resolves to {target}, outside the bundle (through a symlink)")
    return path


def _check_confined(root: Path, entry: FileEntry, what: str) -> None:
    for part in (entry.path, *entry.extra_files):
        confined(root, part, f"{what} file")


def _check_file(directory: Path, entry: FileEntry, what: str, verify_hashes: bool) -> None:
    size = 0
    for part in (entry.path, *entry.extra_files):
        path = directory / part
        if not path.is_file():
            raise BundleError(f"{path}: {what} file listed in the manifest is missing")
        size += path.stat().st_size
    if size != entry.size:
        raise BundleError(
            f"{directory / entry.path}: {what} is {size} bytes, manifest says {entry.size} "
            "(truncated or replaced file)")
    if verify_hashes and file_entry(directory, entry.path, entry.dtype, entry.extra_files).sha256 != entry.sha256:
        raise BundleError(f"{directory / entry.path}: {what} sha256 differs from the manifest (corrupt file)")


def _check_external_data(root: Path, entry: FileEntry) -> None:
    """Every external-data file the ONNX encoder names must be one of its manifest entry's
    extra files (so it is confined, sized and hashed like them) before onnxruntime opens it."""
    model = root / entry.path
    try:
        locations = external_locations(model)
    except MalformedOnnx as exc:
        raise BundleError(f"{model}: cannot load the ONNX audio encoder (not an ONNX model: {exc})") from None
    folder = PurePosixPath(entry.path).parent
    for location in dict.fromkeys(locations):
        relative = str(folder / location) if location else ""
        confined(root, relative, f"audio encoder external data (named in {entry.path})")
        if relative not in entry.extra_files:
            raise BundleError(f"{model}: external data file {location!r} is not listed in the manifest's "
                              f"encoder.extra_files {list(entry.extra_files)}")


def _check_runtime_hints(manifest_path: Path, hints: Any) -> None:
    """quantization.runtime: what a quantized bundle asks of MossAudio (quantize/presets.py)."""
    kinds = {"device": str, "threads": int, "gpu_layers": int}
    if not isinstance(hints, dict) or any(
            hints.get(key) is not None and (not isinstance(hints[key], kind) or isinstance(hints[key], bool))
            for key, kind in kinds.items()):
        raise BundleError(f"{manifest_path}: malformed manifest (quantization.runtime must map device to a "
                          f"string, threads and gpu_layers to integers, got {hints!r})")


def load_bundle(directory: str | Path, verify_hashes: bool = False) -> Bundle:
    """Read and validate a bundle. Every path is checked to stay inside the directory before
    anything is opened; sizes are always checked; hashes when asked (they cost a full read of
    multi-GB files)."""
    root = bundle_path(directory)
    if not root.is_dir():
        raise BundleError(f"{root}: bundle directory not found")
    manifest_path = confined(root, MANIFEST_NAME, "manifest")
    if not manifest_path.is_file():
        raise BundleError(f"{root}: no {MANIFEST_NAME} (not a bundle, or an interrupted export)")
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{manifest_path}: not a moss-audio-edge bundle manifest")
    if data.get("format_version") != FORMAT_VERSION or isinstance(data.get("format_version"), bool):
        raise BundleError(
            f"{manifest_path}: bundle format version {data.get('format_version')!r}; this runtime "
            f"reads version {FORMAT_VERSION} (re-export the bundle with a matching moss-audio-edge)")
    try:
        manifest = Manifest.from_dict(data)
    except BundleError as exc:
        raise BundleError(f"{manifest_path}: malformed manifest ({exc})") from None
    if manifest.model.model_type not in SUPPORTED_MODEL_TYPES:
        raise BundleError(f"{manifest_path}: model type {manifest.model.model_type!r} is not MOSS-Audio")
    _check_runtime_hints(manifest_path, manifest.quantization.get("runtime", {}))
    _check_confined(root, manifest.encoder, "audio encoder")
    _check_confined(root, manifest.llm, "LLM")
    _check_file(root, manifest.encoder, "audio encoder", verify_hashes)
    _check_file(root, manifest.llm, "LLM", verify_hashes)
    _check_external_data(root, manifest.encoder)
    return Bundle(directory=root, manifest=manifest)
