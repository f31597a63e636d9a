"""The ledger that makes `moss-edge batch` resumable (docs/batch.md#resuming).

OUT/moss-edge-batch.ledger.jsonl gets one JSON line per finished input, appended and synced
right after its transcripts are in place: the input's path, size, mtime, content hash, the
bundle's hash and the hash of the settings that shape the output. A rerun skips an input
whose entry still matches and whose transcripts are all there, and redoes one that changed.
A line cut short by a crash is ignored (that file is simply redone).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .bundle import sha256_of

LEDGER_NAME = "moss-edge-batch.ledger.jsonl"


@dataclass(frozen=True)
class Fingerprint:
    size: int
    mtime_ns: int
    sha256: str


@dataclass(frozen=True)
class LedgerEntry:
    input: str
    size: int
    mtime_ns: int
    sha256: str
    bundle: str  # the bundle's manifest hash
    settings: str  # settings_hash of the run
    outputs: list[str]  # relative to OUT
    audio_s: float


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


class Ledger:
    def __init__(self, output_dir: Path, bundle: str, settings: str):
        self.output_dir, self.bundle, self.settings = output_dir, bundle, settings
        self.path = output_dir / LEDGER_NAME
        self.entries: dict[str, LedgerEntry] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entry = LedgerEntry(**json.loads(line))
                except (json.JSONDecodeError, TypeError):
                    continue  # the tail of a run killed mid-write
                self.entries[entry.input] = entry  # the latest entry of an input wins

    def finished(self, path: Path) -> LedgerEntry | None:
        """The entry of `path` if it is done with this bundle and settings and unchanged since:
        size and mtime as recorded, or else the same content (a copy or a `touch`), in which
        case the entry is refreshed so the next run need not hash it again."""
        entry = self.entries.get(str(path))
        if entry is None or (entry.bundle, entry.settings) != (self.bundle, self.settings):
            return None
        if not all((self.output_dir / name).is_file() for name in entry.outputs):
            return None
        try:
            stat = path.stat()
        except OSError:
            return None
        if (stat.st_size, stat.st_mtime_ns) == (entry.size, entry.mtime_ns):
            return entry
        if stat.st_size != entry.size or sha256_of(path) != entry.sha256:
            return None
        refreshed = LedgerEntry(**{**asdict(entry), "mtime_ns": stat.st_mtime_ns})
        self.record(refreshed)
        return refreshed

    def record(self, entry: LedgerEntry) -> None:
        """Append `entry`, on disk before this returns: a crash after it loses nothing."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(entry), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.entries[entry.input] = entry


def read_input(path: Path) -> tuple[bytes, Fingerprint]:
    """The bytes a worker transcribes and the fingerprint the ledger keeps of exactly them
    (stat first: a file changed while read gets a newer mtime, so the next run redoes it)."""
    stat = path.stat()
    data = path.read_bytes()
    return data, Fingerprint(len(data), stat.st_mtime_ns, hashlib.sha256(data).hexdigest())
