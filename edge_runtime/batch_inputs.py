"""What `moss-edge batch` transcribes: its INPUTS expanded into audio files, each with the
place its transcripts go (docs/batch.md#inputs-and-outputs).

A file is taken as given (a bad one fails alone, later); a directory is walked for audio
files; a `.txt`/`.list` file lists paths, one a line, relative to the list's own directory.
A file named directly or in a list writes OUT/<stem>.<format>, as `moss-edge transcribe`
does; a file found in a directory keeps its sub-directory under OUT.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

# what libsndfile decodes (audio.py); anything else in a walked directory is not audio
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".aifc",
                            ".au", ".caf", ".w64", ".rf64"})
LIST_SUFFIXES = frozenset({".txt", ".list", ".lst"})


@dataclass(frozen=True)
class BatchInput:
    path: Path  # absolute: the ledger's key
    name: str  # as the user would recognise it: shown in progress and the summary
    output_stem: Path  # relative to OUT, without the format's suffix


def collect_inputs(inputs: list[Path], reserved: tuple[str, ...] = ()) -> list[BatchInput]:
    """Expand files, directories and list files; a path met twice counts once. Two inputs
    that would write the same transcript, or one that would overwrite a `reserved` file of
    OUT (the ledger, the summary), are refused before anything runs."""
    found: dict[Path, BatchInput] = {}
    for given in inputs:
        for item in _expand(given):
            found.setdefault(item.path, item)
    owners: dict[str, BatchInput] = {}
    for item in found.values():
        key = item.output_stem.as_posix()
        if key in owners:
            raise InputError(f"{owners[key].name} and {item.name} would both write {key}.*: "
                             "rename one or transcribe them in separate batches")
        if any(name.startswith(f"{key}.") for name in reserved):
            raise InputError(f"{item.name} would overwrite the batch's own {key}.* files: rename it")
        owners[key] = item
    return list(found.values())


def _expand(given: Path) -> list[BatchInput]:
    if given.is_dir():
        files = sorted(p for p in given.rglob("*")
                       if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES and not _hidden(p.relative_to(given)))
        return [BatchInput(p.resolve(), str(p), p.relative_to(given).with_suffix("")) for p in files]
    if given.suffix.lower() in LIST_SUFFIXES and given.is_file():
        try:
            lines = given.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{given}: cannot read the list of inputs ({exc})") from exc
        listed = [given.parent / line.strip() for line in lines if line.strip() and not line.startswith("#")]
        return [_file(p) for p in listed]
    return [_file(given)]  # a missing or unreadable file fails on its own, with the others going on


def _file(path: Path) -> BatchInput:
    return BatchInput(path.resolve(), str(path), Path(path.stem))


def _hidden(relative: Path) -> bool:
    """Dot-files and dot-directories (editors' and sync tools' droppings) are not inputs."""
    return any(part.startswith(".") for part in relative.parts)
