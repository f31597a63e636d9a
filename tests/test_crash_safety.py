"""`moss-edge export` and `moss-edge quantize` killed with SIGKILL part-way: the target is never
a loadable half-bundle, and a rerun succeeds and clears what the killed run left
(docs/reliability.md#crash-safety).

Each run is the real CLI in its own process, killed the moment a chosen file shows up in its
staging directory (so the kill lands in that phase, not at a guessed time).
benchmarks/reliability.py runs more kill points, at random times too.
"""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from cli_helpers import MOSS_EDGE

from edge_runtime.bundle import BundleError, load_bundle
from edge_runtime.staging import atomic_path

POLL_S = 0.002


@dataclass(frozen=True)
class Killed:
    returncode: int  # -SIGKILL when the kill landed, 0 when the run finished first
    seconds: float
    leftovers: list[str]  # hidden names beside the target after the kill
    error: str  # the end of stderr when the run failed by itself


def staged(out: Path, name: str | None = None) -> Callable[[], bool]:
    """True once the run's staging directory (or the file `name` inside it) exists."""
    def seen() -> bool:
        return any((d / name).exists() if name else True for d in out.parent.glob(f".{out.name}.partial-*"))
    return seen


def after(seconds: float) -> Callable[[], bool]:
    deadline = time.monotonic() + seconds
    return lambda: time.monotonic() >= deadline


def run_killed(args: list[str], out: Path, when: Callable[[], bool], timeout_s: float = 300) -> Killed:
    """Run `moss-edge ARGS` and SIGKILL it as soon as `when()` is true (or let it finish)."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen([str(MOSS_EDGE), *args], stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            while process.poll() is None and not when():
                assert time.monotonic() - started < timeout_s, f"{args} ran past {timeout_s} s"
                time.sleep(POLL_S)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait()
        finally:
            if process.poll() is None:
                process.kill()
        stderr.seek(0)
        error = stderr.read().decode(errors="replace")[-1000:] if process.returncode > 0 else ""
    return Killed(process.returncode, time.monotonic() - started,
                  sorted(p.name for p in out.parent.glob(f".{out.name}.*")), error)


def assert_no_half_bundle(out: Path, killed: Killed) -> None:
    """Killed: nothing at the target. Finished first: a whole bundle, every hash right."""
    if killed.returncode == 0:
        load_bundle(out, verify_hashes=True)
        return
    assert killed.returncode == -signal.SIGKILL, killed
    assert not out.exists(), f"{out} exists after a kill: {sorted(p.name for p in out.iterdir())}"
    with pytest.raises(BundleError):
        load_bundle(out)


def assert_rerun_succeeds(args: list[str], out: Path) -> None:
    result = subprocess.run([str(MOSS_EDGE), *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    load_bundle(out, verify_hashes=True)
    assert sorted(p.name for p in out.parent.glob(f".{out.name}.*")) == []  # the killed runs' staging is gone


def test_export_killed_at_each_phase_leaves_no_bundle_and_reruns(tiny_checkpoints: dict[str, Path], tmp_path: Path):
    out = tmp_path / "bundle"
    args = ["export", str(tiny_checkpoints["k1"]), str(out), "--llm-type", "F32"]
    for phase in ("encoder.onnx", "llm.gguf"):  # the ONNX trace, the GGUF write
        killed = run_killed(args, out, staged(out, phase))
        assert killed.returncode == -signal.SIGKILL, f"the run finished before {phase} showed up"
        assert_no_half_bundle(out, killed)
        assert any(name.startswith(".bundle.partial-") for name in killed.leftovers), killed
    assert_rerun_succeeds(args, out)


def test_quantize_killed_while_writing_the_gguf_leaves_no_bundle_and_reruns(tiny_bundles: dict[str, Path],
                                                                           tmp_path: Path):
    """Killed when the quantized GGUF shows up in staging (the encoder is done, llama.cpp is
    writing the LLM): a half-written file, no manifest, and nothing at the target."""
    out = tmp_path / "quantized"
    args = ["quantize", str(tiny_bundles["k1"]), str(out), "--encoder", "int4", "--llm", "Q8_0", "--threads", "1"]
    killed = run_killed(args, out, staged(out, "llm.gguf"))
    assert killed.returncode == -signal.SIGKILL, "the run finished before llm.gguf showed up"
    assert_no_half_bundle(out, killed)
    assert_rerun_succeeds(args, out)
    load_bundle(tiny_bundles["k1"], verify_hashes=True)  # the input is only ever read


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_staging_puts_back_a_target_moved_aside_by_a_killed_run_and_spares_live_runs(tmp_path: Path):
    """A run killed between its two renames left the previous target at `.NAME.old-PID` and
    nothing at NAME: the next write puts it back before anything else (here it then fails,
    so the old target is what stays). A live process's staging is not touched."""
    target = tmp_path / "bundle"
    aside = tmp_path / f".bundle.old-{_dead_pid()}"
    aside.mkdir()
    (aside / "manifest.json").write_text("the previous bundle")
    dead_staging = tmp_path / f".bundle.partial-{_dead_pid()}"
    dead_staging.mkdir()
    live_staging = tmp_path / f".bundle.partial-{os.getppid()}"
    live_staging.mkdir()
    with pytest.raises(RuntimeError, match="interrupted"), atomic_path(target) as partial:
        partial.mkdir()
        raise RuntimeError("interrupted")
    assert (target / "manifest.json").read_text() == "the previous bundle"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["bundle", live_staging.name])
