"""Hypothesis fuzzing of everything that parses outside input (docs/reliability.md#fuzzing):
the timestamp parser (what the model writes), the bundle manifest and the ONNX reference
walker (a downloaded bundle), the server's multipart and JSON requests (the network) and the
audio decoder (any file). Each may only answer with its documented errors: an InputError
subclass, or one of the server's documented HTTP statuses.

Examples are bounded so CI stays fast; benchmarks/reliability.py runs the same properties
longer (FUZZ_EXAMPLES). The server runs the real nano model with each reply cut to a few
tokens: what is fuzzed is the parsing, not the decode length.
"""
from __future__ import annotations

import base64
import io
import itertools
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper
from starlette.testclient import TestClient

from edge_runtime.audio import load_audio
from edge_runtime.bundle import EMBEDDED_BUNDLES, MANIFEST_NAME, BundleError, confined, load_bundle
from edge_runtime.engine import Sequence
from edge_runtime.errors import InputError
from edge_runtime.formats import to_srt, to_vtt
from edge_runtime.onnx_external import MalformedOnnx, external_locations
from edge_runtime.server import ServerConfig, create_app
from edge_runtime.speech import speak
from edge_runtime.timestamps import _STAMP, _seconds, parse_output, parse_timed_text, parse_words, shift
from edge_runtime.transcribe import MossAudio

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# requests that reach the model cost a prefill each: fewer of them
FUZZ_MODEL = settings(FUZZ, max_examples=max(10, EXAMPLES // 3))
DOCUMENTED_STATUSES = {200, 400, 401, 413, 429, 503, 504}
REPLY_TOKENS = 4  # each fuzzed request's decode is cut here

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)


def mutated(data: bytes) -> st.SearchStrategy[bytes]:
    """`data` with a few bytes overwritten, a slice cut out or the tail cut off."""
    def apply(edits: list[tuple[int, int]], cut: tuple[int, int] | None, keep: float) -> bytes:
        out = bytearray(data)
        for at, value in edits:
            out[at % len(out)] = value
        if cut is not None:
            lo, n = cut[0] % len(out), cut[1]
            del out[lo:lo + n]
        return bytes(out[: max(1, int(len(out) * keep))])
    return st.builds(apply, st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 255)), max_size=8),
                     st.none() | st.tuples(st.integers(0, 2**31), st.integers(1, 64)),
                     st.sampled_from([1.0, 1.0, 1.0, 0.9, 0.5, 0.1]))


# --- the timestamp parser ------------------------------------------------------------------------

numbers = st.one_of(
    st.floats(0, 200).map(lambda t: f"{t:.2f}"), st.integers(0, 10**40).map(str),
    st.tuples(st.integers(0, 999), st.floats(0, 99)).map(lambda p: f"{p[0]}:{p[1]:05.2f}"),
    st.from_regex(r"\d{1,3}(:\d{1,3}){0,3}(\.\d{0,3})?", fullmatch=True))
stamps = st.builds(lambda pad, n, pad2: f"[{pad}{n}{pad2}]", st.sampled_from(["", " ", "  "]), numbers,
                   st.sampled_from(["", " "]))
model_outputs = st.one_of(
    st.text(max_size=200),
    st.lists(st.one_of(stamps, st.text(max_size=12), st.sampled_from(["[", "]", ".", "。", " ", "\n"])),
             max_size=30).map("".join))
durations = st.none() | st.floats(0, 100)


@FUZZ
@given(model_outputs, durations)
def test_the_timestamp_parser_never_raises_never_loses_text_and_never_makes_a_time_up(text, duration):
    words = parse_timed_text(text, duration)
    # every character outside the stamps is kept, in order
    assert "".join("".join(w.text.split()) for w in words) == "".join(_STAMP.sub("", text).split())
    written = {_seconds(m) for m in _STAMP.findall(text)}
    starts = [w.start for w in words if w.start is not None]
    assert starts == sorted(starts)
    for w in words:
        for t in (w.start, w.end):
            assert t is None or t in written or t == duration
            assert t is None or duration is None or 0 <= t <= duration
        assert w.start is None or w.end is None or w.start <= w.end


@FUZZ
@given(model_outputs, st.floats(0.01, 100), st.sampled_from(["sentence", "word", "none"]), st.floats(0, 10**5))
def test_parsed_output_renders_in_every_format(text, duration, mode, offset):
    segments = [shift(s, offset) for s in parse_output(text, mode, duration)]
    for render in (to_srt, to_vtt):
        render(segments, duration + offset, None)
    if mode == "word":
        assert [w for s in parse_words(text, duration) for w in s.words] == parse_timed_text(text, duration)


# --- the manifest loader -------------------------------------------------------------------------

NANO_MANIFEST = json.loads((EMBEDDED_BUNDLES["nano"] / MANIFEST_NAME).read_text())


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of nano whose manifest each example overwrites."""
    return Path(shutil.copytree(EMBEDDED_BUNDLES["nano"], tmp_path_factory.mktemp("fuzz") / "bundle"))


def _paths(data: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every key path in a JSON tree."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield prefix + (key,)
            yield from _paths(value, prefix + (key,))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield prefix + (i,)
            yield from _paths(value, prefix + (i,))


MANIFEST_PATHS = list(_paths(NANO_MANIFEST))
file_names = st.one_of(st.text(max_size=30), st.sampled_from(
    ["encoder.onnx", "llm.gguf", "/etc/passwd", "../llm.gguf", "./llm.gguf", "a/../llm.gguf", "", ".", "C:\\x",
     "llm.gguf/", "\\..\\llm.gguf", "llm.gguf\0"]))


def _mutate(edits: list[tuple[tuple, str, Any]]) -> dict:
    manifest = json.loads(json.dumps(NANO_MANIFEST))
    for path, action, value in edits:
        *parents, last = path
        node = manifest
        try:
            for key in parents:
                node = node[key]
            if action == "delete":
                del node[last]
            else:
                node[last] = value
        except (KeyError, IndexError, TypeError):
            pass  # an earlier edit removed or replaced this branch
    return manifest


manifest_edits = st.lists(st.tuples(st.sampled_from(MANIFEST_PATHS), st.sampled_from(["set", "delete"]),
                                    st.one_of(json_values, file_names)), min_size=1, max_size=4)


@FUZZ
@given(st.one_of(manifest_edits.map(_mutate), json_values))
def test_a_mutated_manifest_loads_or_is_a_bundle_error(bundle_dir: Path, manifest):
    (bundle_dir / MANIFEST_NAME).write_text(json.dumps(manifest))
    try:
        bundle = load_bundle(bundle_dir)
    except BundleError:
        return
    for path in (bundle.encoder_path, bundle.llm_path):
        assert bundle_dir.resolve() in path.resolve().parents


@FUZZ
@given(st.binary(max_size=300) | mutated(json.dumps(NANO_MANIFEST).encode()))
def test_manifest_bytes_load_or_are_a_bundle_error(bundle_dir: Path, raw: bytes):
    (bundle_dir / MANIFEST_NAME).write_bytes(raw)
    try:
        load_bundle(bundle_dir)
    except BundleError:
        pass


@FUZZ
@given(file_names)
def test_a_confined_path_is_inside_or_refused(bundle_dir: Path, name: str):
    try:
        path = confined(bundle_dir, name, "fuzzed")
    except BundleError:
        return
    assert bundle_dir.resolve() in path.resolve().parents


def _tiny_onnx_with_external_data() -> bytes:
    weight = numpy_helper.from_array(np.ones((8, 8), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", 1, [1, 8])],
                              [helper.make_tensor_value_info("y", 1, [1, 8])], [weight])
    with tempfile.TemporaryDirectory() as scratch:
        onnx.save_model(helper.make_model(graph), f"{scratch}/m.onnx", save_as_external_data=True,
                        location="m.onnx.data", size_threshold=0)
        return Path(f"{scratch}/m.onnx").read_bytes()


TINY_ONNX = _tiny_onnx_with_external_data()


@FUZZ
@given(st.one_of(mutated(TINY_ONNX), st.binary(max_size=200)))
def test_the_onnx_reference_walker_reads_or_refuses(bundle_dir: Path, raw: bytes):
    (bundle_dir / "m.onnx").write_bytes(raw)
    try:
        locations = external_locations(bundle_dir / "m.onnx")
    except MalformedOnnx:
        return
    assert all(isinstance(location, str) for location in locations)
    if raw == TINY_ONNX:
        assert locations == ["m.onnx.data"]


# --- the audio decoder -----------------------------------------------------------------------------

def _encoded(fmt: str, subtype: str | None = None) -> bytes:
    tone = (0.3 * np.sin(np.arange(4000) * 0.1)).astype(np.float32)
    out = io.BytesIO()
    sf.write(out, np.stack([tone, -tone], axis=1), 8000, format=fmt, subtype=subtype)
    return out.getvalue()


AUDIO_FILES = [_encoded("WAV", "PCM_16"), _encoded("WAV", "FLOAT"), _encoded("FLAC"), _encoded("OGG"),
               _encoded("MP3"), _encoded("AIFF")]


@FUZZ
@given(st.one_of(st.binary(max_size=400), st.sampled_from(AUDIO_FILES).flatmap(mutated)))
def test_audio_bytes_decode_or_are_an_audio_error(raw: bytes):
    try:
        samples = load_audio(raw)
    except InputError:
        return
    assert samples.dtype == np.float32 and samples.ndim == 1 and len(samples) > 0
    assert np.isfinite(samples).all()


# --- the server's request parsing ----------------------------------------------------------------

KEY = "fuzz-key"


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return speak("Turn on the lights.", tmp_path_factory.mktemp("clip") / "clip.wav").read_bytes()


@pytest.fixture(scope="module")
def server(clip: bytes) -> Iterator[TestClient]:
    """The real app on the real nano model, each reply's decode cut to REPLY_TOKENS tokens."""
    model = MossAudio("nano", threads=1, n_ctx=2048)
    decode = Sequence.decode
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Sequence, "decode", lambda self, max_tokens, *a, **k:
                      itertools.islice(decode(self, max_tokens, *a, **k), REPLY_TOKENS))
        app = create_app(model, ServerConfig(model_id="nano", api_key=KEY, max_body_bytes=200_000, timeout_s=60))
        with TestClient(app) as client:
            yield client
    model.close()


def _assert_documented(response) -> None:
    assert response.status_code in DOCUMENTED_STATUSES, (response.status_code, response.text)
    if response.status_code != 200:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"]
    assert "internal error" not in response.text, response.text


FORM_NAMES = st.sampled_from(["response_format", "timestamp_granularities[]", "timestamp_granularities", "stream",
                              "temperature", "language", "prompt", "model", "x"])
FORM_VALUES = st.one_of(st.text(max_size=20), st.sampled_from(
    ["json", "text", "srt", "vtt", "verbose_json", "word", "segment", "true", "false", "nan", "inf", "-1", "1e999",
     "0.5", "en", ""]))


def _transcribe(server: TestClient, fields: list[tuple[str, str]], files: dict | None):
    return server.post("/v1/audio/transcriptions", data=dict(fields) if fields else None, files=files,
                       headers={"Authorization": f"Bearer {KEY}"})


@FUZZ
@given(st.data())
def test_fuzzed_transcription_forms_get_a_documented_status(server: TestClient, clip: bytes, data):
    fields = data.draw(st.lists(st.tuples(FORM_NAMES, FORM_VALUES), max_size=5))
    audio = data.draw(st.one_of(mutated(clip), st.binary(max_size=64), st.none()))
    files = None if audio is None else {data.draw(st.sampled_from(["file", "audio"])): ("a.wav", audio)}
    _assert_documented(_transcribe(server, fields, files))


@FUZZ_MODEL
@given(st.lists(st.tuples(FORM_NAMES, FORM_VALUES), max_size=3))
def test_fuzzed_transcription_options_get_a_documented_status(server: TestClient, clip: bytes, fields):
    """The clip is fine: only the form's other fields are fuzzed."""
    _assert_documented(_transcribe(server, fields, {"file": ("a.wav", clip)}))


MULTIPART = (b"--x\r\nContent-Disposition: form-data; name=\"response_format\"\r\n\r\ntext\r\n"
             b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
             b"Content-Type: audio/wav\r\n\r\n" + AUDIO_FILES[0] + b"\r\n--x--\r\n")


@FUZZ
@given(st.one_of(st.binary(max_size=600), mutated(MULTIPART)),
       st.sampled_from(["multipart/form-data; boundary=x", "multipart/form-data", "multipart/form-data; boundary=",
                        "application/x-www-form-urlencoded", "text/plain", ""]))
def test_raw_transcription_bodies_get_a_documented_status(server: TestClient, body: bytes, content_type: str):
    response = server.post("/v1/audio/transcriptions", content=body,
                           headers={"Authorization": f"Bearer {KEY}", "Content-Type": content_type})
    _assert_documented(response)


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=8),
                    st.sampled_from([0, -1, "1", "nan", float("nan"), float("inf"), -0.5]))
SENSIBLE_OPTIONS = {"max_tokens": st.integers(1, 8), "max_completion_tokens": st.integers(1, 8),
                    "temperature": st.floats(0, 2), "top_p": st.floats(0, 1), "seed": st.integers(0, 2**32),
                    "thinking_budget": st.integers(0, 8), "enable_thinking": st.booleans(), "stream": st.booleans(),
                    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()})}


def chat_messages(clip: bytes) -> st.SearchStrategy:
    """Messages broken anywhere: roles, content parts, audio data and formats."""
    audio_data = st.one_of(st.just(clip), mutated(clip), st.binary(max_size=64)).map(
        lambda b: base64.b64encode(b).decode()) | st.text(max_size=20)
    audio_part = st.fixed_dictionaries({"type": st.just("input_audio"), "input_audio": st.fixed_dictionaries(
        {"data": audio_data}, optional={"format": st.sampled_from(["wav", "mp3", "flac", "ogg", "aac", 3])})})
    text_part = st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=20) | json_values})
    system = st.fixed_dictionaries({"role": st.sampled_from(["system", "developer"]),
                                    "content": st.text(max_size=10) | json_values})
    user = st.fixed_dictionaries({"role": st.just("user"), "content": st.lists(
        st.one_of(audio_part, text_part, json_values), max_size=3) | st.text(max_size=10)})
    return st.lists(st.one_of(user, system, json_values), max_size=3)


def _chat(server: TestClient, body: Any):
    # NaN and Infinity written as Python's json reads them back
    return server.post("/v1/chat/completions", content=json.dumps(body).encode(),
                       headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})


@FUZZ
@given(st.data())
def test_fuzzed_chat_messages_get_a_documented_status(server: TestClient, clip: bytes, data):
    body = data.draw(st.one_of(chat_messages(clip).map(lambda m: {"messages": m, "max_tokens": 4}),
                               json_values))
    _assert_documented(_chat(server, body))


@FUZZ_MODEL
@given(st.data())
def test_fuzzed_chat_options_get_a_documented_status(server: TestClient, clip: bytes, data):
    """A well-formed chat whose options are each sensible or anything at all."""
    options = data.draw(st.fixed_dictionaries({}, optional={
        name: st.one_of(good, SCALARS, json_values) for name, good in SENSIBLE_OPTIONS.items()}))
    body = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [
        {"type": "text", "text": "What is said?"},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(clip).decode(), "format": "wav"}}]}],
        **options}
    _assert_documented(_chat(server, body))


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.integers(1, 100_000).map(lambda n: b"[" * n),
                 st.integers(0, 4).map(lambda n: b'{"messages": ' + b"[" * 10**n)))
def test_raw_chat_bodies_get_a_documented_status(server: TestClient, body: bytes):
    response = server.post("/v1/chat/completions", content=body,
                           headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    _assert_documented(response)


def test_the_fuzz_reaches_the_model(server: TestClient, clip: bytes):
    """The properties above are only worth something if a well-formed request gets through."""
    response = server.post("/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, json={
        "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {
            "data": base64.b64encode(clip).decode(), "format": "wav"}}]}], "temperature": 0.5, "seed": 3})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] <= REPLY_TOKENS
    assert math.isfinite(response.json()["created"])
