"""Write a bundle directory all at once: export and quantize build it in a hidden staging
directory beside the target and rename it into place only when it is complete, so a failed
or interrupted run (Ctrl-C included) leaves neither a bundle nor a staging directory behind.
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def check_new_bundle_dir(out: Path) -> None:
    """A bundle is written only to a new or empty directory: never over someone's files."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not empty; choose a new output directory")


@contextmanager
def staged_bundle_dir(out: str | Path) -> Iterator[Path]:
    """Yield an empty staging directory; on success it becomes `out`, on any exception it is
    removed and `out` is left as it was."""
    out = Path(out)
    check_new_bundle_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        if out.exists():
            out.rmdir()  # empty, checked above; os.replace cannot replace a directory
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
