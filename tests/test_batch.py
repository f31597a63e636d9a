"""`moss-edge batch` run as a user runs it: a local Ray instance with 2 workers and the embedded
nano bundle, on espeak-ng speech.

Its transcripts are byte for byte those of `moss-edge transcribe`; bad files are listed with
their reasons and the others go on; Ctrl-C (SIGINT) keeps every finished file, and the rerun
does the rest; a worker SIGKILLed mid-file loses only that file, which is retried, while a file
that was running when two workers died is failed; a rerun skips what is done and rewrites
nothing, and redoes only what changed; Ray leaves no process behind.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cli_helpers import MOSS_EDGE, moss_edge

from edge_runtime.speech import SAMPLE_TEXT, speak

FORMATS = ("txt", "json", "srt", "vtt", "tsv")
WORKERS = ("--workers", "2", "--threads-per-worker", "1")
SENTENCES = [s.strip() for s in re.split(r"(?<=[.?])\s", SAMPLE_TEXT) if s.strip()]
BAD = {"noise.wav": "cannot decode", "notes.flac": "", "empty.wav": ""}  # reasons: checked non-empty
SUMMARY, LEDGER = "moss-edge-batch.summary.json", "moss-edge-batch.ledger.jsonl"


def batch(inputs: list[Path], out: Path, *options: str) -> subprocess.CompletedProcess:
    return moss_edge("batch", "nano", *map(str, inputs), "--output-dir", str(out), *WORKERS, *options)


def summary(out: Path) -> dict[str, dict]:
    return {Path(row["input"]).name: row for row in json.loads((out / SUMMARY).read_text())["inputs"]}


def outputs(out: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every transcript in `out`: (inode, mtime_ns, bytes) by name."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
            for p in out.iterdir() if p.name not in (SUMMARY, LEDGER)}


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """9 espeak-ng clips of 1 to 3 commands at different speeds, 3 files that are not audio,
    and a README that is not an input at all."""
    folder = tmp_path_factory.mktemp("archive")
    for i in range(9):
        text = " ".join(SENTENCES[i % len(SENTENCES):][: 1 + i % 3])
        speak(text, folder / f"clip{i}.wav", words_per_minute=140 + 5 * i)
    (folder / "noise.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(64))
    (folder / "notes.flac").write_text("this is not audio\n")
    (folder / "empty.wav").write_bytes(b"")
    (folder / "README.md").write_text("not an input\n")
    return folder


@pytest.fixture(scope="module")
def reference(archive, tmp_path_factory) -> Path:
    """What `moss-edge transcribe` writes for the same files."""
    out = tmp_path_factory.mktemp("reference")
    files = sorted(p for p in archive.iterdir() if p.suffix != ".md")
    result = moss_edge("transcribe", "nano", *map(str, files), "--format", "all", "--output-dir", str(out),
                       "--quiet", "--threads", "1")
    assert result.returncode == 3, result.stderr  # the bad files
    assert len(list(out.iterdir())) == 9 * len(FORMATS)
    return out


def test_batch_writes_what_transcribe_writes_survives_ctrl_c_and_lists_bad_files(archive, reference, tmp_path):
    out = tmp_path / "out"
    command = [str(MOSS_EDGE), "batch", "nano", str(archive), "--output-dir", str(out), *WORKERS, "--format", "all"]
    with (tmp_path / "stderr").open("w") as stderr:
        run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    try:  # Ctrl-C once the first file is in
        deadline = time.monotonic() + 600  # generous: a loaded 2-core machine
        while not ((out / LEDGER).is_file() and (out / LEDGER).read_text()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (out / LEDGER).is_file() and (out / LEDGER).read_text(), "no file finished in 600 s"
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=120) == 130, (tmp_path / "stderr").read_text()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    interrupted = json.loads((out / SUMMARY).read_text())
    # on a fast machine the other files may all be in before the signal lands (in Ray's shutdown)
    assert interrupted["interrupted"] and 1 <= interrupted["done"] <= 9
    assert len((out / LEDGER).read_text().splitlines()) == interrupted["done"]  # each finished file is in
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no partial transcript
    for path in out.iterdir():
        if path.name not in (SUMMARY, LEDGER):
            assert path.read_bytes() == (reference / path.name).read_bytes(), path.name

    result = batch([archive], out, "--format", "all")
    assert result.returncode == 3, result.stderr  # some inputs were bad
    assert "Traceback" not in result.stderr
    finished = interrupted["done"]
    assert f"12 files: {9 - finished} done, {finished} skipped, 3 failed" in result.stderr
    rows = summary(out)
    assert set(rows) == {f"clip{i}.wav" for i in range(9)} | set(BAD)  # README.md is not audio
    for name, needle in BAD.items():
        assert rows[name]["status"] == "failed" and needle in rows[name]["reason"] and rows[name]["reason"]
        assert f"error: {archive / name}: " in result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([*(p.name for p in reference.iterdir()), SUMMARY, LEDGER])
    for path in reference.iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name

    before = outputs(out)
    again = batch([archive], out, "--format", "all")
    assert again.returncode == 3, again.stderr  # the bad files are still bad, and tried again
    assert "12 files: 0 done, 9 skipped, 3 failed" in again.stderr
    assert outputs(out) == before  # nothing rewritten: same inodes, times and bytes
    assert len((out / LEDGER).read_text().splitlines()) == 9


def test_rerun_redoes_only_what_changed(archive, tmp_path):
    listed = tmp_path / "inputs"
    listed.mkdir()
    for name in ("clip0.wav", "clip1.wav"):
        shutil.copy(archive / name, listed / name)
    (tmp_path / "todo.txt").write_text("inputs/clip0.wav\n\ninputs/clip1.wav\n")  # relative to the list
    out = tmp_path / "out"
    first = batch([tmp_path / "todo.txt"], out)
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(["clip0.json", "clip1.json", SUMMARY, LEDGER])
    kept = outputs(out)["clip0.json"]

    os.utime(listed / "clip0.wav")  # touched: newer mtime, same content
    shutil.copy(archive / "clip2.wav", listed / "clip1.wav")  # new content
    second = batch([tmp_path / "todo.txt"], out)
    assert second.returncode == 0, second.stderr
    rows = summary(out)
    assert rows["clip0.wav"]["status"] == "skipped" and rows["clip1.wav"]["status"] == "done"
    assert outputs(out)["clip0.json"] == kept
    assert json.loads((out / "clip1.json").read_text())["duration"] == rows["clip1.wav"]["audio_s"]

    third = batch([tmp_path / "todo.txt"], out)  # all done: nothing to run, not even Ray
    assert third.returncode == 0 and "2 files: 0 done, 2 skipped, 0 failed" in third.stderr


def _ray_processes(root: int) -> dict[int, str]:
    """The processes below `root` (Ray's raylet, GCS, agents and workers) and their titles."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                try:
                    found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                except OSError:
                    continue
                frontier.append(pid)
    return found


def _kill_worker_running(batch_pid: int, seen: set[int], wanted, timeout_s: float = 120.0) -> tuple[int, str]:
    """SIGKILL the first worker whose process title (`ray::transcribe FILE`) satisfies
    `wanted(pid, FILE)`; (its pid, FILE). `seen` collects every Ray process met."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        processes = _ray_processes(batch_pid)
        seen.update(processes)
        for pid, cmdline in processes.items():
            if cmdline.startswith("ray::transcribe ") and wanted(pid, cmdline.split(" ", 1)[1]):
                os.kill(pid, signal.SIGKILL)
                return pid, cmdline.split(" ", 1)[1]
        time.sleep(0.01)
    raise AssertionError(f"no worker ran a wanted file within {timeout_s} s")


def test_killed_workers_lose_only_their_file(speech_wav, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    names = [f"talk{i}.wav" for i in range(8)]
    for name in names:
        shutil.copy(speech_wav, archive / name)
    reference = tmp_path / "reference"
    assert moss_edge("transcribe", "nano", str(speech_wav), "--format", "json", "--output-dir", str(reference),
                     "--quiet", "--threads", "1").returncode == 0
    out = tmp_path / "out"
    with (tmp_path / "stderr").open("w") as stderr:
        run = subprocess.Popen([str(MOSS_EDGE), "batch", "nano", str(archive), "--output-dir", str(out), *WORKERS],
                               stdout=subprocess.DEVNULL, stderr=stderr)
    seen: set[int] = set()
    try:
        poison = str(archive / names[0])  # equal lengths keep the listed order: sent first
        first, _ = _kill_worker_running(run.pid, seen, lambda pid, file: file == poison)
        # its retry, on the other worker: a second death, so it is failed
        _kill_worker_running(run.pid, seen, lambda pid, file: file == poison and pid != first)
        _, victim = _kill_worker_running(run.pid, seen, lambda pid, file: file != poison)  # retried once
        assert run.wait(timeout=300) == 3, (tmp_path / "stderr").read_text()  # the poison file failed
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    rows = summary(out)
    assert rows[names[0]]["status"] == "failed" and rows[names[0]]["worker_deaths"] == 2
    assert "2 workers died" in rows[names[0]]["reason"]
    assert rows[Path(victim).name]["status"] == "done" and rows[Path(victim).name]["worker_deaths"] == 1
    expected = (reference / "speech.json").read_bytes()
    for name in names[1:]:
        assert rows[name]["status"] == "done", rows[name]
        assert (out / name.replace(".wav", ".json")).read_bytes() == expected, name
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in seen) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in seen if Path(f"/proc/{pid}").exists()], "Ray processes left behind"


def test_ctrl_c_while_a_file_is_booked_waits_for_the_bookkeeping_to_end():
    """The kernel may hand SIGINT to any thread (Ray starts several): a file's transcripts, ledger
    line and count still go in together, and the interrupt comes right after them."""
    from edge_runtime.cli.batch import _ctrl_c_deferred

    idle = threading.Event()
    other = threading.Thread(target=idle.wait)  # does not mask SIGINT, as Ray's threads do not
    other.start()
    booked = False
    try:
        with pytest.raises(KeyboardInterrupt):
            with _ctrl_c_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                deadline = time.monotonic() + 0.5
                while time.monotonic() < deadline:  # Python code runs on: room for the interrupt
                    pass
                booked = True
    finally:
        idle.set()
        other.join()
    assert booked


def test_without_ray_says_how_to_install_it(tmp_path):
    fake = tmp_path / "no-ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'ray'\", name='ray')\n")
    result = moss_edge("batch", "nano", str(tmp_path), "--output-dir", str(tmp_path / "out"),
                       env={"PYTHONPATH": str(fake.parent)})
    assert result.returncode == 4, result.stderr
    assert "pip install moss-audio-edge[batch]" in result.stderr


def test_inputs_that_would_collide_are_refused(archive, tmp_path):
    (tmp_path / "other").mkdir()
    shutil.copy(archive / "clip0.wav", tmp_path / "other" / "clip0.wav")
    result = batch([archive / "clip0.wav", tmp_path / "other" / "clip0.wav"], tmp_path / "out")
    assert result.returncode == 3 and "would both write clip0.*" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()
