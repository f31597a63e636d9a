"""Offline inference: audio -> log-mel -> encoder rows -> prompt -> llama.cpp -> text.

`MossAudio` is the API users hold; it drives the model through its `Engine` (engine.py)."""
from __future__ import annotations

import codecs
import functools
import itertools
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generator, Iterable, Iterator

import numpy as np

from .answer import Answer, AnswerDelta, AnswerStream, ThinkTags, answer_events
from .audio import AudioError, AudioSource, load_audio
from .audio_session import AudioSession
from .bundle import Bundle, load_bundle
from .capture import Block, array_blocks
from .device import DevicePlan, resolve_device
from .engine import Engine, Sampling, Sequence
from .errors import InputError
from .features import SAMPLE_RATE
from .loop_guard import LoopGuardConfig, finish_reason, new_guard
from .prompt import (ANSWER_TOKENS, END_THINKING, INSTRUCTIONS, TIMESTAMP_MODES, Piece, audio_span, build_prompt,
                     prompt_head, prompt_length, question_tail, transcription_budget, with_language)
from .stream import StreamConfig, StreamEvent, StreamingSession, stream_events
from .timestamps import Segment, parse_output, remap
from .windows import SpeechFilter, Window, plan_speech_windows, plan_windows


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    audio_tokens: int
    audio_seconds: float
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class TranscriptionInfo:
    duration: float  # seconds of audio
    timestamps: str  # the mode asked for
    language: str | None  # as given (MOSS-Audio does not report one)
    windows: list[tuple[float, float]]  # (start, end) seconds of each prompt's audio
    speech_s: float = 0.0  # seconds the model hears: all of `duration`, or the speech vad_filter kept
    timings: dict[str, float] = field(default_factory=dict)  # filled in as segments are consumed
    # why each window's decoding ended, as they are consumed: "stop" (the model's end token),
    # "length" (max_tokens) or "repetition" (the loop guard; the loop is left out of the text)
    finish_reasons: list[str] = field(default_factory=list)


@dataclass
class FileTranscript:
    """One file of MossAudio.transcribe_many: its segments and info, or why it was skipped."""
    index: int  # its place in the call's list
    audio: AudioSource
    segments: list[Segment] = field(default_factory=list)
    info: TranscriptionInfo | None = None
    error: AudioError | None = None  # the file could not be read; nothing was transcribed


@dataclass
class _Job:
    """One file being transcribed: its samples, the windows they are cut into, and the info
    its windows fill in as they are decoded."""
    index: int
    samples: np.ndarray
    windows: list[Window]
    info: TranscriptionInfo | None
    on_window: Callable[[int, int], None] | None = None


@dataclass
class _Plan:
    """What a transcription call asks, the same for every file it covers."""
    timestamps: str
    language: str | None
    window_seconds: float
    instruction: str
    budget: int  # output tokens per window
    sampling: Sampling
    system: str | None
    speech: SpeechFilter | None  # vad_filter's settings; None feeds all the audio
    positions: int  # context positions one window takes at most

    def load(self, audio: AudioSource, sample_rate: int | None, on_window: Callable[[int, int], None] | None,
             index: int = 0) -> _Job:
        """Load and check the audio, and cut it into windows."""
        clock = time.perf_counter()
        samples = load_audio(audio, sample_rate)
        if self.speech is not None:
            windows = plan_speech_windows(samples, self.window_seconds, config=self.speech)
        else:
            windows = plan_windows(samples, self.window_seconds)
        info = TranscriptionInfo(
            duration=len(samples) / SAMPLE_RATE, timestamps=self.timestamps, language=self.language,
            windows=[(w.start_s, w.end / SAMPLE_RATE) for w in windows],
            speech_s=round(sum(w.duration_s for w in windows), 3),
            timings={"load_s": time.perf_counter() - clock, "encode_s": 0.0, "prefill_s": 0.0, "decode_s": 0.0})
        return _Job(index, samples, windows, info, on_window)


class MossAudio:
    """A loaded bundle: `MossAudio("bundle_dir").transcribe(audio)`, `.ask(audio, question)`,
    `.stream(blocks)`, or the raw `.generate(audio, instruction)`.

    `device` ("auto", "cpu", "cuda", "tensorrt", "metal") picks the encoder's onnxruntime
    providers and llama.cpp's GPU offload (see device.py); `gpu_layers` overrides the latter.
    `loop_guard` stops a decode that repeats itself (loop_guard.py; None turns it off).
    `parallel` windows of a transcription are prefilled and then decoded together, one token
    of each per llama.cpp batch, sharing `n_ctx`. With `kv_type="f32"` and flash attention off
    they get the tokens they would get one at a time, to the bit; the f16 cache rounds the
    batch differently, which can change a token at a near-tie (measured:
    benchmarks/results/parallel_windows.md). `n_batch` caps the prompt positions of one llama.cpp
    batch (default llm.N_BATCH, docs/format.md#batch-size).
    Calls share one llama.cpp context: consume (or close) a stream before the next call.
    """

    def __init__(self, bundle: str | Path | Bundle, device: str = "auto", threads: int | None = None,
                 n_ctx: int | None = None, gpu_layers: int | None = None, kv_type: str = "f16",
                 flash_attention: str = "auto", verify_hashes: bool = False, strict_device: bool = False,
                 parallel: int = 1, loop_guard: LoopGuardConfig | None = LoopGuardConfig(),
                 n_batch: int | None = None):
        bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, verify_hashes)
        # a quantized bundle names the device it was made for (its preset); arguments win
        hints = bundle.manifest.quantization.get("runtime", {})
        if device == "auto":
            device = hints.get("device", device)
        threads = threads or hints.get("threads")
        gpu_layers = hints.get("gpu_layers") if gpu_layers is None else gpu_layers
        self.device: DevicePlan = resolve_device(device, strict_device)
        self.loop_guard = loop_guard
        # Benchmarks only (docs/benchmarks.md#forced-output): the text to decode for the audio
        # between two times of the file, in place of what the model chooses; every step is still
        # computed, so a random-weight model costs what a real one writing that text costs.
        self.forced_output: Callable[[float, float], str] | None = None
        self.engine = Engine(bundle, self.device.providers,
                             self.device.gpu_layers if gpu_layers is None else gpu_layers,
                             threads=threads, n_ctx=n_ctx, kv_type=kv_type, flash_attention=flash_attention,
                             parallel=parallel, n_batch=n_batch)

    @property
    def bundle(self) -> Bundle:
        return self.engine.bundle

    @property
    def manifest(self):
        return self.engine.manifest

    def close(self) -> None:
        """Free the llama.cpp context and model now rather than at garbage collection."""
        self.engine.close()

    def prefill(self, rows: np.ndarray, instruction: str, system: str | None = None,
                room: int = ANSWER_TOKENS) -> Sequence:
        """Take the context and evaluate the whole prompt over `rows`; the Sequence decodes the
        reply, of up to `room` tokens."""
        return self.engine.start(self._pieces(len(rows), instruction, system), rows, room)

    def _pieces(self, n_rows: int, instruction: str, system: str | None) -> list[Piece]:
        return build_prompt(self.manifest, self.engine.tokenize, n_rows, instruction, system)

    def _audio_head(self, n_rows: int, system: str | None) -> list[Piece]:
        """The prompt up to the end of the audio: what a question's tail follows."""
        return prompt_head(self.manifest, self.engine.tokenize, system) + audio_span(self.manifest, n_rows)

    def generate(self, audio: AudioSource, instruction: str, sample_rate: int | None = None,
                 max_tokens: int = ANSWER_TOKENS, temperature: float = 0.0, top_k: int = 50,
                 top_p: float = 1.0, seed: int | None = None, system: str | None = None,
                 on_text: Callable[[str], None] | None = None) -> Generation:
        """One prompt over the whole clip, as the model's raw text; `on_text` sees the text as
        it is decoded (a character split across tokens comes whole)."""
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        samples = load_audio(audio, sample_rate)
        timings["load_s"] = time.perf_counter() - clock
        clock = time.perf_counter()
        rows = self.engine.encode(samples)
        timings["encode_s"] = time.perf_counter() - clock
        clock = time.perf_counter()
        sequence = self.prefill(rows, instruction, system, room=max_tokens)
        prompt_tokens = sequence.n_past
        timings["prefill_s"] = time.perf_counter() - clock
        clock = time.perf_counter()
        text = codecs.getincrementaldecoder("utf-8")("replace")
        tokens: list[int] = []
        for token in sequence.decode(max_tokens, self.manifest.tokens.stop,
                                     Sampling(temperature, top_k, top_p, seed)):
            tokens.append(token)
            if on_text and (delta := text.decode(self.engine.token_bytes(token))):
                on_text(delta)
        timings["decode_s"] = time.perf_counter() - clock
        return Generation(text=self.engine.detokenize(tokens), token_ids=tokens, prompt_tokens=prompt_tokens,
                          audio_tokens=len(rows), audio_seconds=len(samples) / SAMPLE_RATE, timings=timings)

    # --- transcription ---------------------------------------------------------------------

    def transcribe(self, audio: AudioSource, timestamps: str = "sentence", language: str | None = None,
                   sample_rate: int | None = None, window_seconds: float = 30.0,
                   max_tokens: int | None = None, temperature: float = 0.0, seed: int | None = None,
                   system: str | None = None, on_window: Callable[[int, int], None] | None = None,
                   vad_filter: bool | SpeechFilter = False) -> tuple[Iterator[Segment], TranscriptionInfo]:
        """(segments, info): a lazy generator of Segment, one window of audio per prompt.

        `timestamps`: "none" (one segment per window, timed by the window), "sentence" or
        "word" (segments hold their words). Times are seconds from the start of `audio`; a
        side the model left untimed is None. The audio is loaded (and checked) now, the work
        happens as the segments are consumed; `on_window(done, total)` follows the windows.
        `max_tokens` is per window (default: scaled to the window and the mode, prompt.py).
        `vad_filter` (True, or a windows.SpeechFilter) feeds only the speech the voice activity
        detector finds: long silences are skipped, times stay on the file's clock
        (`info.speech_s` says how much audio the model heard).
        """
        plan = self._plan(timestamps, language, window_seconds, max_tokens, temperature, seed, system, vad_filter)
        job = plan.load(audio, sample_rate, on_window)
        segments = (segment for _, _, window_segments in self._decode_windows(iter([job]), plan)
                    for segment in window_segments)
        return segments, job.info

    def transcribe_many(self, audios: Iterable[AudioSource], sample_rate: int | None = None,
                        on_segment: Callable[[int, Segment], None] | None = None,
                        on_window: Callable[[int, int, int], None] | None = None,
                        **options) -> Iterator[FileTranscript]:
        """Several files in one call, `options` as for transcribe: their windows fill the
        `parallel` sequences across files (a short file's window is decoded alongside the
        next file's), each file's segments are those `transcribe` gives it. Yields one
        FileTranscript per file, in order, once its last window is done; a file that cannot
        be read is one with `error` set, and the others go on. `on_segment(i, segment)` and
        `on_window(i, done, total)` follow file i as its windows are decoded."""
        plan = self._plan(**options)
        files: dict[int, FileTranscript] = {}

        def jobs() -> Iterator[_Job]:  # each file is loaded when its windows are next
            for index, audio in enumerate(audios):
                files[index] = FileTranscript(index, audio)
                try:
                    job = plan.load(audio, sample_rate, on_window and functools.partial(on_window, index), index)
                except AudioError as exc:
                    files[index].error = exc
                    yield _Job(index, np.zeros(0, np.float32), [], None)
                    continue
                files[index].info = job.info
                yield job

        for job, window, segments in self._decode_windows(jobs(), plan):
            transcript = files[job.index]
            transcript.segments += segments
            if on_segment:
                for segment in segments:
                    on_segment(job.index, segment)
            if window is None or window.index + 1 == len(job.windows):
                yield files.pop(job.index)

    def _plan(self, timestamps: str = "sentence", language: str | None = None, window_seconds: float = 30.0,
              max_tokens: int | None = None, temperature: float = 0.0, seed: int | None = None,
              system: str | None = None, vad_filter: bool | SpeechFilter = False) -> _Plan:
        if timestamps not in TIMESTAMP_MODES:
            raise InputError(f"timestamps={timestamps!r}: choose one of {', '.join(TIMESTAMP_MODES)}")
        instruction = with_language(INSTRUCTIONS[timestamps], language)
        budget = max_tokens or transcription_budget(timestamps, window_seconds)
        speech = vad_filter if isinstance(vad_filter, SpeechFilter) else SpeechFilter() if vad_filter else None
        return _Plan(timestamps, language, window_seconds, instruction, budget, Sampling(temperature, seed=seed),
                     system, speech, self._window_positions(window_seconds, instruction, system, budget))

    def _window_positions(self, window_seconds: float, instruction: str, system: str | None, budget: int) -> int:
        """Positions one window's prompt and output take at most; refused up front when the
        parallel windows cannot fit the context together."""
        rows = math.ceil(window_seconds * self.manifest.audio.tokens_per_second) + 1
        prompt = build_prompt(self.manifest, self.engine.tokenize, rows, instruction, system)
        per_window = prompt_length(prompt) + budget
        needed = per_window * self.engine.n_seq  # the parallel windows share the context
        if needed > self.engine.max_context:
            raise InputError(f"{self.engine.n_seq} window(s) of {window_seconds:g} s need {needed} tokens of "
                             f"context ({per_window} each: prompt and {budget} output tokens); the context "
                             f"holds {self.engine.max_context}: use shorter windows, fewer output tokens, fewer "
                             "parallel windows or a larger n_ctx")
        return per_window

    def _decode_windows(self, jobs: Iterator[_Job], plan: _Plan) -> Iterator[tuple[_Job, Window | None, list[Segment]]]:
        """(job, window, its segments) for every window of every job, in order; a job without
        windows (a file that failed to load) passes as (job, None, []) in its place.

        Windows are taken `parallel` at a time, across jobs; each group takes the context
        afresh and is decoded whole before its segments are handed out, so a consumer may
        interleave other calls between groups."""
        waiting: deque[tuple[_Job, Window | None]] = deque()  # in order; None: a windowless job
        for job in itertools.chain(jobs, [None]):
            if job is not None:
                waiting += [(job, window) for window in job.windows] or [(job, None)]
            while waiting and (job is None or sum(w is not None for _, w in waiting) >= self.engine.n_seq):
                group, taken = [], 0  # up to n_seq windows, and the windowless jobs among them
                while waiting and (taken < self.engine.n_seq or waiting[0][1] is None):
                    group.append(waiting.popleft())
                    taken += group[-1][1] is not None
                yield from self._decode_group(group, plan)

    def _decode_group(self, group: list[tuple[_Job, Window | None]],
                      plan: _Plan) -> Iterator[tuple[_Job, Window | None, list[Segment]]]:
        """Prefill the group's windows as parallel sequences, decode them together, and hand
        out the group's entries in order."""
        windows = [(job, window) for job, window in group if window is not None]
        mode, stop = plan.timestamps, self.manifest.tokens.stop
        guards = [new_guard(self.loop_guard, self.engine.token_bytes, mode != "none", w.duration_s)
                  for _, w in windows]
        scripts = [self._script(w.start_s, w.end / SAMPLE_RATE) for _, w in windows]
        clock = time.perf_counter()
        rows = []
        for job, window in windows:
            rows.append(self.engine.encode(window.audio(job.samples)))
            job.info.timings["encode_s"] += time.perf_counter() - clock
            clock = time.perf_counter()
        sequences = self.engine.start_group(len(windows), plan.positions) if windows else []
        for (job, _), sequence, window_rows in zip(windows, sequences, rows):
            sequence.prefill(self._pieces(len(window_rows), plan.instruction, plan.system), window_rows)
            job.info.timings["prefill_s"] += time.perf_counter() - clock
            clock = time.perf_counter()
        outputs: list[list[int]] = []
        if len(windows) == 1:  # one window: decoded token by token on its own
            outputs = [list(sequences[0].decode(plan.budget, stop, plan.sampling, guards[0], scripts[0]))]
        elif windows:
            outputs = self.engine.decode_together(sequences, plan.budget, stop, plan.sampling, guards, scripts)
        decoded = iter(zip(outputs, guards))
        decode_share = (time.perf_counter() - clock) / max(1, len(windows))  # one batch served them all
        for job, window in group:
            if window is None:
                yield job, None, []
                continue
            tokens, guard = next(decoded)
            job.info.timings["decode_s"] += decode_share
            job.info.finish_reasons.append(finish_reason(tokens, plan.budget, guard))
            text = self.engine.detokenize(guard.kept(tokens) if guard else tokens)
            segments = [remap(segment, window.file_time) for segment in parse_output(text, mode, window.duration_s)]
            if job.on_window:
                job.on_window(window.index + 1, len(job.windows))
            yield job, window, segments

    def _script(self, start_s: float, end_s: float) -> list[int] | None:
        return None if self.forced_output is None else self.engine.tokenize(self.forced_output(start_s, end_s))

    # --- questions -------------------------------------------------------------------------

    def ask_stream(self, audio: AudioSource, question: str, sample_rate: int | None = None,
                   thinking: bool | None = None, thinking_budget: int | None = None,
                   max_tokens: int = ANSWER_TOKENS, temperature: float = 0.0, top_k: int = 50, top_p: float = 1.0,
                   seed: int | None = None, system: str | None = None) -> AnswerStream:
        """Iterate for AnswerDelta("thinking" | "answer", text); `.answer` is the Answer at the end.

        `thinking`: None lets the model do as it was trained, False makes a Thinking model
        answer at once, True changes nothing (an Instruct model never thinks).
        `thinking_budget`: reasoning tokens after which `</think>` is forced. The audio is
        loaded, encoded and the prompt evaluated now; tokens come as the stream is consumed,
        so another call on this model before the stream is done makes it raise ContextTaken.
        """
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        samples = load_audio(audio, sample_rate)
        rows = self.engine.encode(samples)
        timings["encode_s"] = time.perf_counter() - clock
        clock = time.perf_counter()
        room = max_tokens + len(self.engine.tokenize(END_THINKING))  # the forced close is not counted
        tail = question_tail(self.manifest, self.engine.tokenize, question, thinking)
        # the question after the audio, in batches of its own as a session asks it: the same answer to the bit
        sequence = self.engine.start(self._audio_head(len(rows), system), rows, prompt_length(tail) + room)
        sequence.prefill(tail)
        timings["prefill_s"] = time.perf_counter() - clock
        return AnswerStream(self._answer(sequence, len(samples) / SAMPLE_RATE, timings, max_tokens,
                                         thinking_budget, Sampling(temperature, top_k, top_p, seed)))

    def ask(self, audio: AudioSource, question: str, on_text: Callable[[AnswerDelta], None] | None = None,
            **options) -> Answer:
        """The whole answer (options as for ask_stream); `on_text` sees each delta as it comes."""
        return self.ask_stream(audio, question, **options).collect(on_text)

    def session(self, audio: AudioSource, sample_rate: int | None = None, system: str | None = None) -> AudioSession:
        """Audio to ask several questions about: encoded and evaluated once, now; each
        `session.ask(question, ...)` then costs only the question's tokens and the answer,
        and gives what `ask(audio, question, ...)` gives (audio_session.py)."""
        clock = time.perf_counter()
        samples = load_audio(audio, sample_rate)
        rows = self.engine.encode(samples)
        return AudioSession(self.engine, self._audio_head(len(rows), system), rows, len(samples) / SAMPLE_RATE,
                            self._answer, encode_s=time.perf_counter() - clock)

    def _answer(self, sequence: Sequence, audio_seconds: float, timings: dict[str, float], max_tokens: int,
                thinking_budget: int | None, sampling: Sampling) -> Generator[AnswerDelta, None, Answer]:
        prompt_tokens = sequence.n_past
        clock = time.perf_counter()
        guard = new_guard(self.loop_guard, self.engine.token_bytes, timestamped=False)
        completion = yield from answer_events(
            start=lambda n: sequence.decode(n, self.manifest.tokens.stop, sampling, guard),
            eval_tokens=sequence.eval_tokens, token_bytes=self.engine.token_bytes,
            tags=ThinkTags.find(self.engine.tokenize), max_tokens=max_tokens, thinking_budget=thinking_budget,
            end_thinking=self.engine.tokenize(END_THINKING), guard=guard)
        timings["decode_s"] = time.perf_counter() - clock
        return Answer(**vars(completion), prompt_tokens=prompt_tokens, audio_seconds=audio_seconds,
                      timings=timings)

    # --- live ------------------------------------------------------------------------------

    def stream_session(self, timestamps: str = "sentence", **options) -> StreamingSession:
        """A live session to `feed` 16 kHz blocks to, `ask_stream` questions about what it
        heard, and `finish`; `options` are StreamConfig fields."""
        options.setdefault("loop_guard", self.loop_guard)
        options.setdefault("forced_output", self.forced_output)
        return StreamingSession(self.engine, StreamConfig(timestamps=timestamps, **options), answer=self._answer)

    def stream(self, source: Iterable, timestamps: str = "sentence", sample_rate: int = SAMPLE_RATE,
               session: StreamingSession | None = None, **options) -> Iterator[StreamEvent]:
        """Live transcription events (`partial`, `final`, `status`) from a block source: an
        iterable of `capture.Block`s (microphone_blocks, file_blocks) or of numpy sample
        blocks at `sample_rate`. `options` are StreamConfig fields; pass your own `session`
        (from `stream_session`) to flush it yourself on Ctrl-C."""
        blocks = iter(source)
        first = next(blocks, None)
        if first is None:
            return
        chained = itertools.chain([first], blocks)
        if not isinstance(first, Block):
            chained = array_blocks(chained, sample_rate)
        yield from stream_events(chained, session or self.stream_session(timestamps, **options))
