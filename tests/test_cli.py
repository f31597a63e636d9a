"""`moss-edge` as users and scripts meet it: the stable `run --json` interface, the errors
bad input gets (exit code 3, one `error:` line), and a runtime that never imports the
export stack (torch, transformers, ...)."""
from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from cli_helpers import assert_one_line_error, moss_edge

import edge_runtime
import edge_runtime.bundle as bundle_module
from edge_runtime.audio import AudioError
from edge_runtime.cli import build_parser, exit_codes, main
from edge_runtime.errors import InputError
from edge_runtime.prompt import ANSWER_TOKENS
from edge_runtime.transcribe import MossAudio

PROMPT = "Transcribe the audio."
LONG_RUN = 40  # tokens: enough for sampling to leave the greedy path reliably
# One llama.cpp thread: on a small, busy machine its spinning thread pool can be many times
# slower with all cores (seen: 14 s instead of 1 s on 2 shared cores). The default is
# exercised by test_a_single_mel_frame_is_enough.
ONE_THREAD = ("--threads", "1")
EXPORT_STACK = ("torch", "transformers", "safetensors", "onnx", "gguf", "moss_audio_edge")


def blocking(names: tuple[str, ...]) -> str:
    """Code to prepend to a `python -c` program: importing any of `names` (or a submodule)
    then fails as if the package were not installed."""
    return f"""
import importlib.abc, sys
class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {names!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None
sys.meta_path.insert(0, _Blocked())
"""


BLOCK_EXPORT_STACK = blocking(EXPORT_STACK)


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def run_json(bundle: Path, audio: Path, *options: str, threads: tuple[str, ...] = ONE_THREAD) -> dict:
    result = moss_edge("run", str(bundle), "--audio", str(audio), "--prompt", PROMPT, "--json",
                       *threads, *options)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout  # exactly one JSON object, nothing else
    return json.loads(lines[0])


def greedy_args(n: int) -> list[str]:
    return ["--max-tokens", str(n), "--temperature", "0"]


@pytest.fixture(scope="module")
def bundle(tiny_bundles: dict[str, Path]) -> Path:
    return tiny_bundles["k1"]


@pytest.fixture(scope="module")
def greedy(bundle: Path, speech_wav: Path) -> dict:
    """One greedy CLI run of LONG_RUN tokens, shared by the tests below."""
    return run_json(bundle, speech_wav, *greedy_args(LONG_RUN))


# --- the stable interface ----------------------------------------------------------------

def test_run_json_prints_text_token_ids_and_timings(greedy: dict, bundle: Path):
    assert {"text", "token_ids", "timings"} <= greedy.keys()
    ids = greedy["token_ids"]
    assert len(ids) == LONG_RUN and all(isinstance(t, int) for t in ids)
    assert isinstance(greedy["text"], str) and greedy["text"].strip()
    assert set(greedy["timings"]) >= {"load_s", "encode_s", "prefill_s", "decode_s"}
    assert all(isinstance(v, float) and v >= 0 for v in greedy["timings"].values())
    stop = set(json.loads((bundle / "manifest.json").read_text())["tokens"]["stop"])
    assert not stop & set(ids)


def test_greedy_cli_matches_in_process_generate_and_repeats(greedy: dict, bundle: Path, speech_wav: Path):
    model = MossAudio(bundle, threads=1)  # as the CLI runs it: one thread, 8192 context
    in_process = model.generate(speech_wav, PROMPT, max_tokens=LONG_RUN, temperature=0.0)
    assert greedy["token_ids"] == in_process.token_ids
    assert greedy["text"] == in_process.text
    assert len(set(in_process.token_ids)) > 10  # a real sequence, not one token repeated
    assert run_json(bundle, speech_wav, *greedy_args(LONG_RUN))["token_ids"] == greedy["token_ids"]


def test_max_tokens_bounds_the_output(greedy: dict, bundle: Path, speech_wav: Path):
    ids = run_json(bundle, speech_wav, *greedy_args(5))["token_ids"]
    assert len(ids) <= 5
    assert ids == greedy["token_ids"][:5]


def test_stop_token_ends_generation_and_is_not_printed(greedy: dict, bundle: Path, speech_wav: Path,
                                                       tmp_path: Path):
    """A bundle whose stop list also holds a token of the greedy run (the first new one from
    the 6th on) stops right before it, and the stop token is not in the output."""
    ids = greedy["token_ids"]
    cut = next(i for i in range(5, len(ids)) if ids[i] not in ids[:i])
    stopping = Path(shutil.copytree(bundle, tmp_path / "bundle"))
    manifest = json.loads((stopping / "manifest.json").read_text())
    manifest["tokens"]["stop"].append(ids[cut])
    (stopping / "manifest.json").write_text(json.dumps(manifest))
    assert run_json(stopping, speech_wav, *greedy_args(LONG_RUN))["token_ids"] == ids[:cut]


def test_seeded_sampling_repeats_and_leaves_the_greedy_path(greedy: dict, bundle: Path, speech_wav: Path):
    sample = ["--max-tokens", str(LONG_RUN), "--temperature", "1.0"]
    first = run_json(bundle, speech_wav, *sample, "--seed", "3")["token_ids"]
    again = run_json(bundle, speech_wav, *sample, "--seed", "3")["token_ids"]
    other_seed = run_json(bundle, speech_wav, *sample, "--seed", "4")["token_ids"]
    assert first == again
    assert first != greedy["token_ids"]
    assert first != other_seed


def test_version():
    result = moss_edge("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"moss-audio-edge {edge_runtime.__version__}"
    assert edge_runtime.__version__ == importlib.metadata.version("moss-audio-edge")


# --- bad input as a user meets it --------------------------------------------------------

def _missing_audio(d: Path) -> Path:
    return d / "no-such-recording.wav"


def _text_renamed_wav(d: Path) -> Path:
    path = d / "notes.wav"
    path.write_text("meeting notes, not a recording\n")
    return path


def _image_file(d: Path) -> Path:
    path = d / "cover.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(200))
    return path


def _nan_wav(d: Path) -> Path:
    samples = 0.1 * np.sin(np.arange(16000, dtype=np.float32) / 10)
    samples[8000] = np.nan
    path = d / "nan.wav"
    sf.write(path, samples, 16000, subtype="FLOAT")
    return path


def _empty_wav(d: Path) -> Path:
    path = d / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    return path


def _shorter_than_a_frame(d: Path) -> Path:
    path = d / "click.wav"
    sf.write(path, 0.1 * np.ones(100, dtype=np.float32), 16000)  # a mel frame is 160 samples
    return path


AUDIO_ERRORS = {
    "missing_audio": (_missing_audio, ["audio file not found", "no-such-recording.wav"]),
    "text_renamed_wav": (_text_renamed_wav, ["cannot decode", "notes.wav"]),
    "unsupported_type": (_image_file, ["cannot decode", "cover.png", "unsupported format"]),
    "nan_wav": (_nan_wav, ["nan.wav", "NaN"]),
    "empty_wav": (_empty_wav, ["empty.wav", "no audio samples"]),
    "shorter_than_a_frame": (_shorter_than_a_frame, ["too short", "100 samples"]),
}


@pytest.mark.parametrize("name", sorted(AUDIO_ERRORS))
def test_bad_audio_is_a_one_line_error(name: str, bundle: Path, tmp_path: Path):
    make, needles = AUDIO_ERRORS[name]
    audio = make(tmp_path)
    result = moss_edge("run", str(bundle), "--audio", str(audio), "--json")
    assert_one_line_error(result, needles)


def test_missing_bundle_is_a_one_line_error(tmp_path: Path, speech_wav: Path):
    result = moss_edge("run", str(tmp_path / "no-bundle"), "--audio", str(speech_wav), "--json")
    assert_one_line_error(result, ["no-bundle", "bundle directory not found"])


def test_a_single_mel_frame_is_enough(bundle: Path, tmp_path: Path):
    """The boundary of the error above: 160 samples run (with the default thread count)."""
    path = tmp_path / "one-frame.wav"
    sf.write(path, 0.1 * np.sin(np.arange(160, dtype=np.float32)), 16000)
    assert len(run_json(bundle, path, *greedy_args(2), threads=())["token_ids"]) == 2


# --- the runtime without the export stack ------------------------------------------------

def test_blocker_really_blocks():
    result = python(BLOCK_EXPORT_STACK + "import torch")
    assert result.returncode != 0 and "blocked by the test" in result.stderr


def test_runtime_imports_without_the_export_stack():
    code = BLOCK_EXPORT_STACK + (
        "import edge_runtime.transcribe, edge_runtime.cli\n"
        f"print(sorted(m for m in sys.modules if m.partition('.')[0] in {EXPORT_STACK!r}))\n")
    result = python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_run_works_without_the_export_stack(greedy: dict, bundle: Path, speech_wav: Path):
    code = BLOCK_EXPORT_STACK + (
        "from edge_runtime.cli import main\n"
        "sys.argv = ['moss-edge'] + sys.argv[1:]\n"
        "sys.exit(main())\n")
    result = python(code, "run", str(bundle), "--audio", str(speech_wav), "--prompt", PROMPT, "--json",
                    *ONE_THREAD, *greedy_args(LONG_RUN))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["token_ids"] == greedy["token_ids"]


def test_export_without_the_export_stack_names_the_extra(tiny_checkpoints, tmp_path: Path):
    # the third-party stack missing, our own `export` package present: what a runtime-only
    # install gives
    code = blocking(tuple(n for n in EXPORT_STACK if n != "moss_audio_edge")) + (
        "from edge_runtime.cli import main\n"
        "sys.argv = ['moss-edge'] + sys.argv[1:]\n"
        "sys.exit(main())\n")
    out = tmp_path / "bundle"
    result = python(code, "export", str(tiny_checkpoints["k1"]), str(out))
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr
    assert "moss-audio-edge[export]" in result.stderr and "torch" in result.stderr
    assert not out.exists()


# --- one vocabulary: flags and the exit-code contract ------------------------------------

def test_device_means_the_compute_device_everywhere_and_mic_the_microphone():
    parser = build_parser()
    for command in (["run", "nano", "--audio", "a.wav"], ["transcribe", "nano", "a.wav"], ["ask", "nano", "a.wav", "Q?"],
                    ["listen", "nano"], ["serve", "nano"], ["bench", "nano"]):
        assert parser.parse_args([*command, "--device", "cuda"]).device == "cuda"
        assert parser.parse_args(command).device == "auto"
    listen = parser.parse_args(["listen", "nano", "--mic", "USB Audio", "--device", "cpu"])
    assert (listen.mic, listen.device, listen.input) == ("USB Audio", "cpu", None)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["listen", "nano", "--mic", "2", "--input", "a.wav"])
    assert exit_info.value.code == exit_codes.USAGE
    quantize = parser.parse_args(["quantize", "nano", "out", "--runtime-device", "cuda"])
    assert quantize.runtime_device == "cuda" and not hasattr(quantize, "device")


def test_output_budgets_are_max_tokens_with_the_prompt_defaults():
    parser = build_parser()
    assert parser.parse_args(["run", "nano", "--audio", "a.wav"]).max_tokens == ANSWER_TOKENS
    assert parser.parse_args(["run", "nano", "--audio", "a.wav", "--max-tokens", "7"]).max_tokens == 7
    assert parser.parse_args(["ask", "nano", "a.wav", "Q?"]).max_tokens == ANSWER_TOKENS
    assert parser.parse_args(["transcribe", "nano", "a.wav"]).max_tokens is None  # scaled to the window


def test_an_unknown_device_is_bad_input(bundle: Path, speech_wav: Path):
    result = moss_edge("run", str(bundle), "--audio", str(speech_wav), "--device", "tpu")
    assert_one_line_error(result, ["unknown device 'tpu'"])


@pytest.mark.parametrize("error, code", [
    (InputError("bad input"), exit_codes.BAD_INPUT),
    (AudioError("bad audio"), exit_codes.BAD_INPUT),
    (ValueError("a bug that happens to be a ValueError"), exit_codes.FAILURE),
    (RuntimeError("a bug"), exit_codes.FAILURE),
    (ModuleNotFoundError("No module named 'numpy'", name="numpy"), exit_codes.FAILURE),  # `info` has no extra
    (KeyboardInterrupt(), exit_codes.INTERRUPTED),
])
def test_only_input_errors_are_bad_input(error: BaseException, code: int, monkeypatch, capsys, caplog):
    def failing(*args, **kwargs):
        raise error
    monkeypatch.setattr(bundle_module, "load_bundle", failing)
    assert main(["info", "nano"]) == code
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: ") == (code == exit_codes.BAD_INPUT), stderr
    bugs = [r for r in caplog.records if r.name == "moss_edge" and r.exc_info and r.exc_info[1] is error]
    assert len(bugs) == (code == exit_codes.FAILURE)


def test_a_bug_exits_1_with_its_traceback_on_stderr():
    code = (
        "import sys\n"
        "import edge_runtime.bundle\n"
        "def broken(*args, **kwargs):\n"
        "    raise ValueError('a bug, not bad input')\n"
        "edge_runtime.bundle.load_bundle = broken\n"
        "from edge_runtime.cli import main\n"
        "sys.exit(main(['info', 'nano']))\n")
    result = python(code)
    assert result.returncode == exit_codes.FAILURE, result.stderr
    assert "Traceback" in result.stderr and "ValueError: a bug, not bad input" in result.stderr
    assert "error: " not in result.stderr


def test_version_and_help_load_neither_onnxruntime_nor_llama_cpp():
    code = ("import sys\n"
            "import edge_runtime\n"
            "from edge_runtime.cli import build_parser\n"
            "build_parser().format_help()\n"
            "print(edge_runtime.__version__, sorted(m for m in sys.modules if m.partition('.')[0] in "
            "('onnxruntime', 'llama_cpp')))\n")
    result = python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(" ", 1) == [edge_runtime.__version__, "[]\n"]


def test_public_api_names():
    assert set(edge_runtime.__all__) >= {"MossAudio", "Segment", "Word", "TranscriptionInfo", "InputError",
                                         "AudioError", "BundleError"}
    for name in edge_runtime.__all__:
        assert getattr(edge_runtime, name) is not None
    assert issubclass(edge_runtime.AudioError, edge_runtime.InputError)
    assert issubclass(edge_runtime.BundleError, edge_runtime.InputError)
    assert issubclass(edge_runtime.DeviceError, edge_runtime.InputError)
