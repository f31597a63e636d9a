"""Write files and directories all at once: each is built under a hidden name beside its
target and renamed into place only when complete, so a failed or interrupted run (Ctrl-C
included) leaves neither a partial target nor the hidden one behind; what a run killed outright
(SIGKILL) left is cleared by the next write to the same target (docs/reliability.md#crash-safety).

Transcripts, manifests, training state and whole bundles (export, quantize, the nano release)
are all written this way.
"""
from __future__ import annotations

import glob
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import InputError


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a free path beside `target` to write a file or build a directory at. When the
    block ends without an exception that path replaces `target` (a directory too); on any
    exception it is removed and `target` is left as it was."""
    target = Path(target)
    partial = target.parent / f".{target.name}.partial-{os.getpid()}"
    _remove(partial)  # an earlier process with this PID, killed outright
    _clear_killed_runs(target)
    try:
        yield partial
        if target.is_dir():  # os.replace cannot replace a directory: move the old one aside
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
            os.replace(partial, target)
            shutil.rmtree(old)
        else:
            os.replace(partial, target)
    except BaseException:
        _remove(partial)
        raise


def write_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` at once (UTF-8, LF line ends), on disk before the rename."""
    with atomic_path(path) as partial, partial.open("w", encoding="utf-8", newline="\n") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def check_new_bundle_dir(out: Path) -> None:
    """A bundle is written only to a new or empty directory: never over someone's files."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: exists and is not empty; choose a new output directory")


@contextmanager
def staged_bundle_dir(out: str | Path) -> Iterator[Path]:
    """Yield an empty staging directory; on success it becomes `out`, on any exception it is
    removed and `out` is left as it was."""
    out = Path(out)
    check_new_bundle_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as staging:
        staging.mkdir()
        yield staging


def _clear_killed_runs(target: Path) -> None:
    """What runs killed outright (SIGKILL, power loss) left beside `target`: their staging is
    removed, and a previous `target` they had moved aside (killed between the two renames) is
    put back if nothing replaced it. A leftover whose process still runs is left alone."""
    for leftover in sorted(target.parent.glob(f".{glob.escape(target.name)}.*-*")):
        kind, _, pid = leftover.name[len(target.name) + 1:].rpartition("-")
        if kind not in (".partial", ".old") or not pid.isdigit() or _running(int(pid)):
            continue
        if kind == ".old" and not target.exists():
            os.replace(leftover, target)
        else:
            _remove(leftover)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
