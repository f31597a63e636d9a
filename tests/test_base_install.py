"""`pip install .` with no extras, into a fresh virtual environment: the runtime stands on its
own there (the demo, the embedded nano model), torch is absent, and the import names are the
project's own."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The wheel is built from a copy of these: an in-tree build could pick up stale build/ output.
SOURCES = ("pyproject.toml", "README.md", "edge_runtime", "export", "quantize")


def run(*command: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    # no PYTHONPATH: only what the install put in the venv may be importable
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=env)


@pytest.fixture(scope="module")
def base_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The venv's bin directory; commands run in a directory outside the repository."""
    root = tmp_path_factory.mktemp("base-install")
    source = root / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    result = run(venv / "bin" / "pip", "install", "-q", source, cwd=root, timeout=1200)
    assert result.returncode == 0, result.stderr
    return venv / "bin"


def test_torch_is_not_installed(base_install: Path):
    result = run(base_install / "python", "-c", "import torch", cwd=base_install.parent)
    assert result.returncode != 0 and "No module named 'torch'" in result.stderr, result.stderr


def test_import_names_are_the_projects_own(base_install: Path):
    """export/ and quantize/ install under moss_audio_edge; training code stays out of the wheel."""
    code = ("from importlib.util import find_spec as f; "
            "print([f(n) is not None for n in ('export', 'quantize', 'moss_audio_edge.export.checkpoint', "
            "'moss_audio_edge.quantize.presets', 'moss_audio_edge.export.nano')])")
    result = run(base_install / "python", "-c", code, cwd=base_install.parent)
    assert result.stdout.strip() == "[False, False, True, True, False]", (result.stdout, result.stderr)


def test_demo_prints_a_timestamped_transcript(base_install: Path, tmp_path: Path):
    result = run(base_install / "moss-edge", "demo", "--cache-dir", tmp_path, "--threads", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = re.findall(r"\[\s*[\d.]+ ->\s*[\d.]+\] \w+", result.stdout)
    assert len(rows) >= 3, result.stdout


def test_transcribe_nano_on_espeak_speech(base_install: Path, tmp_path: Path):
    espeak = shutil.which("espeak-ng")
    assert espeak, "espeak-ng is missing: scripts/setup.sh installs it"
    wav = tmp_path / "command.wav"
    subprocess.run([espeak, "-w", str(wav), "turn on the kitchen lights"], check=True)
    result = run(base_install / "moss-edge", "transcribe", "nano", wav, "--threads", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "kitchen" in result.stdout.lower(), result.stdout
