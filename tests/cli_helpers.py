"""Running the installed `moss-edge` CLI as a subprocess, and the error contract it keeps on
bad input (exit code 3, one `error:` line, no traceback)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

MOSS_EDGE = Path(sys.executable).with_name("moss-edge")


def moss_edge(*args: str, env: dict[str, str] | None = None,
              cwd: Path | str | None = None) -> subprocess.CompletedProcess:
    """`moss-edge ARGS...`, output captured as text; `env` is merged over os.environ."""
    assert MOSS_EDGE.is_file(), f"{MOSS_EDGE} missing: is the package installed in this venv?"
    return subprocess.run([str(MOSS_EDGE), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def assert_one_line_error(result: subprocess.CompletedProcess, needles: list[str]) -> None:
    """Exit code 3, no traceback, nothing on stdout, and stderr is exactly one `error: ` line
    naming every needle."""
    assert result.returncode == 3, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def assert_bad_input(result: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 3, no traceback, and exactly one `error: ` line naming every needle; unlike
    assert_one_line_error, stderr may hold other lines too (progress, warnings) and stdout is
    not checked."""
    assert result.returncode == 3, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
