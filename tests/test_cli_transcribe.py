"""`moss-edge transcribe`, `ask` and `export MODEL_ID` run as a user runs them.

Bad input gets exit code 3, one `error:` line naming the problem, no traceback and no output
files; usage mistakes get argparse's exit code 2.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from cli_helpers import assert_bad_input, moss_edge

FAST = ("--threads", "1", "--n-ctx", "2048")  # one llama.cpp thread: robust on a busy 2-core machine
FORMATS = ("txt", "json", "srt", "vtt", "tsv")


@pytest.fixture(scope="module")
def bundle(tiny_bundles) -> str:
    return str(tiny_bundles["k1"])


def transcribe(bundle: str, audio: Path | str | list[Path], out: Path, *options: str) -> subprocess.CompletedProcess:
    files = [str(a) for a in audio] if isinstance(audio, list) else [str(audio)]
    return moss_edge("transcribe", bundle, *files, "--format", "all", "--output-dir", str(out),
                     "--window-seconds", "10", "--max-tokens", "16", *FAST, *options)


def test_transcribe_writes_every_format(bundle, speech_wav, tmp_path):
    result = transcribe(bundle, speech_wav, tmp_path / "out", "--progress")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"speech.{f}" for f in FORMATS)
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith("[") and " --> " in line for line in lines)
    assert "speech.wav: window 3/3 (100%)" in result.stderr
    data = json.loads((tmp_path / "out" / "speech.json").read_text())
    assert data["duration"] == pytest.approx(21.38, abs=0.05) and len(data["segments"]) == len(lines)
    assert (tmp_path / "out" / "speech.vtt").read_text().startswith("WEBVTT\n\n")
    assert (tmp_path / "out" / "speech.tsv").read_text().startswith("start\tend\ttext\n")


def test_transcribe_prints_only_without_format(bundle, speech_wav, tmp_path):
    result = moss_edge("transcribe", bundle, str(speech_wav), "--timestamps", "none",
                       "--window-seconds", "10", "--max-tokens", "8", *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []
    assert result.stdout.splitlines()[0].startswith("[00:00:00.000 --> ")


def test_parallel_windows_write_the_same_files_across_files(bundle, speech_wav, tmp_path):
    """A 7 s file, then speech.wav's three windows: with --parallel 3 the short file's window
    is decoded together with the long file's first two."""
    short = tmp_path / "short.wav"
    sf.write(short, sf.read(speech_wav, dtype="float32")[0][: 7 * 16000], 16000)
    files = [short, speech_wav]
    one = transcribe(bundle, files, tmp_path / "one")
    three = transcribe(bundle, files, tmp_path / "three", "--parallel", "3", "--progress")
    assert one.returncode == three.returncode == 0, three.stderr
    assert one.stdout == three.stdout
    assert "short.wav: window 1/1 (100%)" in three.stderr and "speech.wav: window 3/3 (100%)" in three.stderr
    names = [f"{stem}.{f}" for stem in ("short", "speech") for f in FORMATS]
    assert sorted(p.name for p in (tmp_path / "three").iterdir()) == sorted(names)
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "three" / name).read_bytes(), name


# --- bad input: a clear message, exit 3, nothing written ----------------------------------

def corrupt_wav(path: Path) -> Path:
    path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(64))
    return path


def text_file(path: Path) -> Path:
    path.write_text("this is not audio\n")
    return path


def nan_wav(path: Path) -> Path:
    samples = np.zeros(16000, np.float32)
    samples[100] = np.nan
    sf.write(path, samples, 16000, subtype="FLOAT")
    return path


def empty_wav(path: Path) -> Path:
    sf.write(path, np.zeros(0, np.float32), 16000)
    return path


@pytest.mark.parametrize("make, name, needles", [
    (corrupt_wav, "corrupt.wav", ["corrupt.wav", "cannot decode"]),
    (text_file, "notes.txt", ["notes.txt", "unsupported format"]),
    (nan_wav, "nan.wav", ["nan.wav", "NaN"]),
    (empty_wav, "empty.wav", ["empty.wav", "no audio samples"]),
    (lambda path: path, "missing.wav", ["missing.wav", "not found"]),
])
def test_bad_audio_is_refused_with_no_outputs(bundle, tmp_path, make, name, needles):
    audio = make(tmp_path / name)
    result = transcribe(bundle, audio, tmp_path / "out")
    assert_bad_input(result, *needles)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    assert result.stdout == ""


def test_missing_bundle(tmp_path, speech_wav):
    result = transcribe(str(tmp_path / "no-bundle"), speech_wav, tmp_path / "out")
    assert_bad_input(result, "no-bundle", "not found")
    assert not (tmp_path / "out").exists()


def test_one_bad_file_among_good_ones_fails_alone(bundle, speech_wav, tmp_path):
    bad = corrupt_wav(tmp_path / "bad.wav")
    result = moss_edge("transcribe", bundle, str(bad), str(speech_wav), "--format", "txt,srt", "--output-dir",
                       str(tmp_path / "out"), "--window-seconds", "10", "--max-tokens", "8", *FAST)
    assert_bad_input(result, "bad.wav")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["speech.srt", "speech.txt"]


@pytest.mark.parametrize("args", [["--format", "docx"], ["--timestamps", "segment"]])
def test_usage_errors_exit_2(bundle, speech_wav, tmp_path, args):
    result = moss_edge("transcribe", bundle, str(speech_wav), *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_window_too_long_for_the_context(bundle, speech_wav, tmp_path):
    result = moss_edge("transcribe", bundle, str(speech_wav), "--window-seconds", "600", *FAST)
    assert_bad_input(result, "tokens of context")


def test_requested_gpu_falls_back_with_a_warning(bundle, speech_wav, tmp_path):
    result = moss_edge("transcribe", bundle, str(speech_wav), "--device", "cuda", "--timestamps", "none",
                       "--max-tokens", "4", *FAST)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "device 'cuda' unavailable" in line]
    assert len(warnings) == 1 and "falling back to the CPU" in warnings[0]


# --- ask -----------------------------------------------------------------------------------

def test_ask_json(bundle, speech_wav):
    result = moss_edge("ask", bundle, str(speech_wav), "What is said?", "--json", "--max-tokens", "6",
                       "--thinking-budget", "2", *FAST)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["completion_tokens"] <= 6 and data["finish_reason"] in ("stop", "length")
    assert set(data) >= {"answer", "thinking", "prompt_tokens", "audio_seconds", "timings"}


def test_ask_bad_audio(bundle, tmp_path):
    result = moss_edge("ask", bundle, str(corrupt_wav(tmp_path / "c.wav")), "What?", *FAST)
    assert_bad_input(result, "c.wav")


# --- export from a Hugging Face id, offline ------------------------------------------------

def test_export_of_a_model_id_offline_says_how_to_proceed(tmp_path):
    result = moss_edge("export", "OpenMOSS-Team/MOSS-Audio-4B-Instruct", str(tmp_path / "bundle"),
                       env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert_bad_input(result, "OpenMOSS-Team/MOSS-Audio-4B-Instruct", "could not be downloaded",
                     "HF_HUB_OFFLINE", "moss-edge export DIR OUT")
    assert not (tmp_path / "bundle").exists()


def test_export_of_a_missing_local_path_is_not_taken_for_a_model_id(tmp_path):
    result = moss_edge("export", str(tmp_path / "ckpt"), str(tmp_path / "bundle"),
                       env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 3 and "Hugging Face" not in result.stderr
