"""The Python API: MossAudio.transcribe (windows, timestamps), MossAudio.ask (thinking), device.

Model outputs that must parse are scripted (fake_generation.py) while everything else runs
for real; the real tiny random models then show the pipeline never crashes on what they
actually write and reports their untimed text as such.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
from fake_generation import script_outputs

from edge_runtime.prompt import END_THINKING, NO_THINKING
from edge_runtime.audio import AudioError
from edge_runtime.device import CPU, DeviceError, resolve_device
from edge_runtime.errors import InputError
from edge_runtime.features import SAMPLE_RATE
from edge_runtime.transcribe import MossAudio
from edge_runtime.windows import plan_windows


@pytest.fixture(scope="module")
def model(tiny_bundles) -> MossAudio:
    return MossAudio(tiny_bundles["k2"], threads=1, n_ctx=4096)


# --- windows -------------------------------------------------------------------------------

def test_windows_cut_at_the_quietest_point_and_tile_the_audio():
    rng = np.random.default_rng(0)
    audio = rng.uniform(-0.5, 0.5, 95 * SAMPLE_RATE).astype(np.float32)
    audio[int(27.0 * SAMPLE_RATE):int(27.4 * SAMPLE_RATE)] = 0.0  # a pause inside the first search range
    windows = plan_windows(audio, window_seconds=30.0, search_seconds=5.0)
    assert 27.0 <= windows[0].end / SAMPLE_RATE <= 27.4
    assert windows[0].start == 0 and windows[-1].end == len(audio)
    assert all(a.end == b.start for a, b in zip(windows, windows[1:]))
    assert all(0 < w.duration_s <= 30.0 for w in windows)


def test_short_audio_is_one_window_and_bad_settings_are_refused():
    assert len(plan_windows(np.zeros(SAMPLE_RATE, np.float32), 30.0)) == 1
    with pytest.raises(ValueError):
        plan_windows(np.zeros(10, np.float32), window_seconds=0)
    with pytest.raises(ValueError):
        plan_windows(np.zeros(10, np.float32), window_seconds=10, search_seconds=10)


def test_three_minutes_are_processed_window_by_window_with_continuous_timestamps(model, speech, monkeypatch):
    pause = np.zeros(SAMPLE_RATE * 3 // 2, np.float32)
    audio = np.concatenate([speech, pause] * 8)  # ~183 s
    encoded: list[int] = []
    encode = model.engine.encode
    monkeypatch.setattr(model.engine, "encode", lambda samples: encoded.append(len(samples)) or encode(samples))

    def output(i: int) -> str:  # each window: two sentences, the second ending where the window ends
        end = int(encoded[-1] / SAMPLE_RATE * 100) / 100
        return f"[0.00]window {i} first[4.00][4.00]window {i} second[{end:.2f}]"

    calls = script_outputs(monkeypatch, model, output)
    progress: list[tuple[int, int]] = []
    segments, info = model.transcribe(audio, timestamps="sentence", window_seconds=30.0,
                                      on_window=lambda done, total: progress.append((done, total)))
    assert encoded == [] and calls == []  # lazy: nothing is decoded before it is asked for
    first = next(segments)
    assert len(encoded) == 1 and len(calls) == 1  # one window at a time
    got = [first, *segments]

    n = len(info.windows)
    assert n >= 6 and len(encoded) == n and progress == [(i + 1, n) for i in range(n)]
    assert max(encoded) <= 30 * SAMPLE_RATE  # memory: one window of audio, rows and context at a time
    assert info.windows[0][0] == 0.0 and info.windows[-1][1] == pytest.approx(len(audio) / SAMPLE_RATE)
    assert info.duration == pytest.approx(len(audio) / SAMPLE_RATE)
    assert [s.text for s in got] == [f"window {i} {which}" for i in range(n) for which in ("first", "second")]
    for i, (start, end) in enumerate(info.windows):
        a, b = got[2 * i], got[2 * i + 1]
        assert (a.start, a.end, b.start) == (round(start, 3), round(start + 4, 3), round(start + 4, 3))
        assert b.end == pytest.approx(end, abs=0.011)
    times = [t for s in got for t in (s.start, s.end)]
    assert times == sorted(times)  # continuous across windows, never going back
    assert set(info.timings) == {"load_s", "encode_s", "prefill_s", "decode_s"}


def test_a_stamp_past_its_window_is_dropped_not_carried_into_the_next(model, speech, monkeypatch):
    script_outputs(monkeypatch, model, ["[0.00]a[99.00]", "[1.00]b[2.00]"])
    segments, info = model.transcribe(speech, window_seconds=12.0)
    got = list(segments)
    assert len(info.windows) == 2
    assert [(s.start, s.end, s.text) for s in got] == [
        (0.0, None, "a"), (round(info.windows[1][0] + 1, 3), round(info.windows[1][0] + 2, 3), "b")]


def test_word_timestamps_give_segments_with_words(model, speech, monkeypatch):
    script_outputs(monkeypatch, model, ["[0.50]Turn[0.80][0.80]on[0.95][0.95]the[1.05][1.05]lights.[1.60]"
                                        "[2.00]Set[2.30][2.30]a[2.40]timer"])
    segments, _ = model.transcribe(speech, timestamps="word")
    got = list(segments)
    assert [(s.start, s.end, s.text) for s in got] == [(0.5, 1.6, "Turn on the lights."), (2.0, None, "Set a timer")]
    assert [(w.start, w.end, w.text) for w in got[1].words] == [
        (2.0, 2.3, "Set"), (2.3, 2.4, "a"), (2.4, None, "timer")]


def test_language_and_mode_choose_the_instruction(model, speech, monkeypatch):
    seen: list[str] = []
    pieces = model._pieces
    monkeypatch.setattr(model, "_pieces",
                        lambda n_rows, instruction, *a: seen.append(instruction) or pieces(n_rows, instruction, *a))
    script_outputs(monkeypatch, model, ["hello"] * 2)
    list(model.transcribe(speech, timestamps="none", language="zh")[0])
    list(model.transcribe(speech, timestamps="word")[0])
    assert seen[0] == "Transcribe the audio. The speech is in Chinese."
    assert seen[1].startswith("Transcribe the audio into word-level timestamps")


def test_bad_arguments_fail_before_any_work(model, speech):
    with pytest.raises(ValueError, match="timestamps='segment'"):
        model.transcribe(speech, timestamps="segment")
    with pytest.raises(ValueError, match="tokens of context"):
        model.transcribe(speech, window_seconds=600.0)
    with pytest.raises(AudioError, match="NaN"):
        model.transcribe(np.full(16000, np.nan, np.float32))
    with pytest.raises(AudioError, match="no audio samples"):
        model.transcribe(np.zeros(0, np.float32))


def test_audio_as_bytes_or_array_with_its_rate(model, speech_wav, speech, monkeypatch):
    script_outputs(monkeypatch, model, ["[0.00]x[1.00]"] * 2)
    _, from_bytes = model.transcribe(speech_wav.read_bytes())
    halved = speech[::2].copy()
    _, from_array = model.transcribe(halved, sample_rate=8000)
    assert from_bytes.duration == pytest.approx(len(speech) / SAMPLE_RATE)
    assert from_array.duration == pytest.approx(len(halved) / 8000, abs=1e-3)


@pytest.mark.parametrize("mode", ["none", "sentence", "word"])
def test_real_tiny_models_never_crash_and_report_untimed_text(tiny_bundles, tiny_name, speech_wav, mode):
    real = MossAudio(tiny_bundles[tiny_name], threads=1, n_ctx=2048)
    segments, info = real.transcribe(speech_wav, timestamps=mode, window_seconds=10.0, max_tokens=24)
    got = list(segments)
    assert got and len(info.windows) == 3
    bounds = [(start - 1e-3, end + 1e-3) for start, end in info.windows]
    for segment in got:
        assert segment.text.strip()
        for t in (segment.start, segment.end):  # a time is either None or inside some window
            assert t is None or any(lo <= t <= hi for lo, hi in bounds)
    if mode == "none":
        assert all(s.timed for s in got)
    print(f"{tiny_name}/{mode}: {sum(not s.timed for s in got)} of {len(got)} segments untimed")


# --- ask and thinking ----------------------------------------------------------------------

def test_instruct_style_answer(model, speech, monkeypatch):
    script_outputs(monkeypatch, model, ["A person gives a list of commands."])
    answer = model.ask(speech, "What is happening?")
    assert (answer.text, answer.thinking, answer.finish_reason) == ("A person gives a list of commands.", None, "stop")
    assert answer.prompt_tokens > 300 and answer.audio_seconds == pytest.approx(len(speech) / SAMPLE_RATE)


def test_thinking_is_returned_apart_and_streamed_by_kind(model, speech, monkeypatch):
    script_outputs(monkeypatch, model, ["<think>\nThe voice is calm.\n</think>\n\nNeutral."])
    stream = model.ask_stream(speech, "What emotion?")
    deltas = list(stream)
    assert stream.answer.thinking == "The voice is calm." and stream.answer.text == "Neutral."
    assert "".join(d.text for d in deltas if d.kind == "thinking").strip() == "The voice is calm."
    assert "".join(d.text for d in deltas if d.kind == "answer") == "Neutral."


def test_thinking_budget_forces_the_answer(model, speech, monkeypatch):
    forced = model.engine.tokenize(END_THINKING)
    calls = script_outputs(monkeypatch, model, ["<think>\none two three four five six seven", "Forced answer."])
    seen: list[str] = []
    answer = model.ask(speech, "Why?", thinking_budget=3, max_tokens=40, on_text=lambda d: seen.append(d.kind))
    assert answer.thinking == "one two"  # three thinking tokens: "\n", "one", " two"
    assert answer.text == "Forced answer."
    assert answer.token_ids[:4] == model.engine.tokenize("<think>\none two")
    assert answer.token_ids[4:4 + len(forced)] == forced  # the close went into the reply's ids
    assert calls[1] - calls[0] == 1 + len(forced)  # last thinking token and the close were evaluated
    assert seen.index("answer") > seen.index("thinking")


def test_thinking_off_prefixes_an_empty_think_block(model, speech, monkeypatch):
    script_outputs(monkeypatch, model, ["a", "b"])
    default = model.ask(speech, "Q?")
    off = model.ask(speech, "Q?", thinking=False)
    assert off.prompt_tokens - default.prompt_tokens == len(model.engine.tokenize(NO_THINKING))
    assert off.thinking is None


def test_token_budget_gives_finish_reason_length(model, speech, monkeypatch):
    script_outputs(monkeypatch, model, ["one two three four five six"])
    answer = model.ask(speech, "Q?", max_tokens=3)
    assert answer.finish_reason == "length" and len(answer.token_ids) == 3


def test_real_tiny_model_answers_with_a_budget(tiny_bundles, speech_wav):
    real = MossAudio(tiny_bundles["k1"], threads=1, n_ctx=2048)
    answer = real.ask(speech_wav, "What do you hear?", thinking_budget=4, max_tokens=12, temperature=0.8, seed=1)
    assert len(answer.token_ids) >= 1 and answer.finish_reason in ("stop", "length")


# --- device --------------------------------------------------------------------------------

def test_requested_cuda_on_this_cpu_machine_falls_back_with_one_line(tiny_bundles, caplog):
    with caplog.at_level(logging.WARNING, logger="moss_edge"):
        cpu = MossAudio(tiny_bundles["k1"], device="cuda", threads=1, n_ctx=512)
    assert len(caplog.records) == 1 and "\n" not in caplog.records[0].getMessage()
    assert "CUDAExecutionProvider" in caplog.text and "falling back to the CPU" in caplog.text
    assert cpu.engine.encoder.providers == [CPU] and cpu.device.gpu_layers == 0
    with pytest.raises(DeviceError, match="unavailable"):
        MossAudio(tiny_bundles["k1"], device="cuda", strict_device=True)


@pytest.mark.parametrize("device, available, offload, providers, layers", [
    ("auto", [CPU], False, [CPU], 0),
    ("auto", ["CUDAExecutionProvider", CPU], True, ["CUDAExecutionProvider", CPU], 999),
    ("auto", ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU], True, ["CUDAExecutionProvider", CPU], 999),
    ("tensorrt", ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU], True,
     ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU], 999),
    ("metal", ["CoreMLExecutionProvider", CPU], True, ["CoreMLExecutionProvider", CPU], 999),
    ("CoreML", ["CoreMLExecutionProvider", CPU], True, ["CoreMLExecutionProvider", CPU], 999),
    ("cpu", ["CUDAExecutionProvider", CPU], True, [CPU], 0),
])
def test_device_resolution(device, available, offload, providers, layers, caplog):
    with caplog.at_level(logging.WARNING, logger="moss_edge"):
        plan = resolve_device(device, available=available, gpu_offload=offload)
    assert (plan.providers, plan.gpu_layers) == (providers, layers)
    assert caplog.records == []


def test_partial_device_falls_back_for_the_missing_part_only(caplog):
    with caplog.at_level(logging.WARNING, logger="moss_edge"):
        plan = resolve_device("cuda", available=["CUDAExecutionProvider", CPU], gpu_offload=False)
    assert plan.providers == ["CUDAExecutionProvider", CPU] and plan.gpu_layers == 0
    assert "GGML_CUDA" in caplog.text and "onnxruntime" not in caplog.text


def test_unknown_device_is_refused():
    with pytest.raises(DeviceError, match="unknown device 'npu'"):
        resolve_device("npu")


# --- parallel windows ------------------------------------------------------------------------

# Greedy with the default f16 KV cache; sampled with exact arithmetic (f32 cache, no flash
# attention), where the batch's logits equal one sequence's to the bit: with f16 rounding a
# sampled draw that lands near the edge of a token's probability can pick its neighbour.
@pytest.mark.parametrize("sampling, settings", [({}, {}), ({"temperature": 0.8, "seed": 7},
                                                         {"kv_type": "f32", "flash_attention": "off"})],
                         ids=["greedy", "sampled-exact"])
def test_parallel_windows_give_the_sequential_segments(tiny_bundles, speech, sampling, settings):
    audio = np.concatenate([speech, speech[: 8 * SAMPLE_RATE]])  # windows of <= 10 s cut at pauses
    options = dict(timestamps="sentence", window_seconds=10.0, max_tokens=16, **sampling)
    one = MossAudio(tiny_bundles["k2"], threads=1, n_ctx=2048, **settings)
    segments, info = one.transcribe(audio, **options)
    want = [(s.start, s.end, s.text) for s in segments]
    assert len(info.windows) >= 4 and len(info.windows) % 3  # a group of 3, then a smaller one
    three = MossAudio(tiny_bundles["k2"], threads=1, n_ctx=2048, parallel=3, **settings)
    seen: list[int] = []
    segments, _ = three.transcribe(audio, on_window=lambda done, total: seen.append(done), **options)
    assert [(s.start, s.end, s.text) for s in segments] == want
    assert seen == list(range(1, len(info.windows) + 1))


def test_several_files_share_the_parallel_windows_and_keep_their_own_segments(tiny_bundles, speech, tmp_path,
                                                                               monkeypatch):
    files = [speech[: 7 * SAMPLE_RATE], speech[3 * SAMPLE_RATE:], speech[: 12 * SAMPLE_RATE]]
    options = dict(timestamps="sentence", window_seconds=10.0, max_tokens=16)
    one = MossAudio(tiny_bundles["k2"], threads=1, n_ctx=2048)
    want = [[(s.start, s.end, s.text) for s in one.transcribe(audio, **options)[0]] for audio in files]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(64))
    three = MossAudio(tiny_bundles["k2"], threads=1, n_ctx=2048, parallel=3)
    groups: list[int] = []
    start_group = three.engine.start_group
    monkeypatch.setattr(three.engine, "start_group", lambda n, positions: groups.append(n) or start_group(n, positions))
    followed: list[tuple[int, int, int]] = []
    shown: list[int] = []
    results = list(three.transcribe_many([files[0], bad, files[1], files[2]], on_window=lambda *w: followed.append(w),
                                         on_segment=lambda i, segment: shown.append(i), **options))
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert isinstance(results[1].error, AudioError) and "bad.wav" in str(results[1].error)
    assert results[1].segments == [] and results[1].info is None
    good = [results[0], results[2], results[3]]
    assert [[(s.start, s.end, s.text) for s in r.segments] for r in good] == want
    sizes = [len(r.info.windows) for r in good]
    assert sizes[0] == 1  # alone, the first file would leave two sequences idle
    assert groups == [3] * (sum(sizes) // 3) + [sum(sizes) % 3] * bool(sum(sizes) % 3)  # full groups, across files
    assert followed == [(i, done, n) for i, n in ((0, sizes[0]), (2, sizes[1]), (3, sizes[2]))
                        for done in range(1, n + 1)]
    assert shown == sorted(shown) and set(shown) == {0, 2, 3}
    assert [len(r.info.finish_reasons) for r in good] == sizes


def test_parallel_windows_must_fit_the_shared_context(tiny_bundles, speech):
    model = MossAudio(tiny_bundles["k2"], threads=1, n_ctx=1024, parallel=4)
    with pytest.raises(InputError, match="4 window"):
        model.transcribe(speech, window_seconds=30.0)
    with pytest.raises(InputError, match="parallel=0"):
        MossAudio(tiny_bundles["k2"], threads=1, parallel=0)
