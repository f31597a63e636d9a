"""Offline inference: audio -> log-mel -> encoder rows -> prompt -> llama.cpp -> text.

`MossAudio` is the API users hold; it drives the model through its `Engine` (engine.py)."""
from __future__ import annotations

import codecs
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generator, Iterable, Iterator

import numpy as np

from .answer import END_THINKING, NO_THINKING, Answer, AnswerDelta, AnswerStream, ThinkTags, answer_events
from .audio import AudioSource, load_audio
from .bundle import Bundle, load_bundle
from .capture import Block, array_blocks
from .device import DevicePlan, resolve_device
from .engine import Engine, Sampling, Sequence
from .errors import InputError
from .features import SAMPLE_RATE
from .prompt import (ANSWER_TOKENS, INSTRUCTIONS, TIMESTAMP_MODES, Piece, Tokens, build_prompt, flat_ids,
                     transcription_budget, with_language)
from .stream import StreamConfig, StreamEvent, StreamingSession, stream_events
from .timestamps import Segment, parse_output, shift
from .windows import Window, plan_windows


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
    timings: dict[str, float] = field(default_factory=dict)  # filled in as segments are consumed


class MossAudio:
    """A loaded bundle: `MossAudio("bundle_dir").transcribe(audio)`, `.ask(audio, question)`,
    `.stream(blocks)`, or the raw `.generate(audio, instruction)`.

    `device` ("auto", "cpu", "cuda", "tensorrt", "metal") picks the encoder's onnxruntime
    providers and llama.cpp's GPU offload (see device.py); `gpu_layers` overrides the latter.
    `parallel` windows of a transcription are prefilled and then decoded together, one token
    of each per llama.cpp batch, sharing `n_ctx`. With `kv_type="f32"` and flash attention off
    they get the tokens they would get one at a time, to the bit; the f16 cache rounds the
    batch differently, which can change a token at a near-tie (measured:
    benchmarks/results/parallel_windows.md).
    Calls share one llama.cpp context: consume (or close) a stream before the next call.
    """

    def __init__(self, bundle: str | Path | Bundle, device: str = "auto", threads: int | None = None,
                 n_ctx: int = 8192, gpu_layers: int | None = None, kv_type: str = "f16",
                 flash_attention: str = "auto", verify_hashes: bool = False, strict_device: bool = False,
                 parallel: int = 1):
        bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, verify_hashes)
        # a quantized bundle names the device it was made for (its preset); arguments win
        hints = bundle.manifest.quantization.get("runtime", {})
        if device == "auto":
            device = hints.get("device", device)
        threads = threads or hints.get("threads")
        gpu_layers = hints.get("gpu_layers") if gpu_layers is None else gpu_layers
        self.device: DevicePlan = resolve_device(device, strict_device)
        self.engine = Engine(bundle, self.device.providers,
                             self.device.gpu_layers if gpu_layers is None else gpu_layers,
                             threads=threads, n_ctx=n_ctx, kv_type=kv_type, flash_attention=flash_attention,
                             parallel=parallel)

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
               assistant_prefix: str = "") -> Sequence:
        """Take the context and evaluate the whole prompt over `rows`; the Sequence decodes the
        reply. `assistant_prefix` is text the reply is taken to begin with."""
        return self.engine.start(self._pieces(len(rows), instruction, system, assistant_prefix), rows)

    def _pieces(self, n_rows: int, instruction: str, system: str | None, assistant_prefix: str = "") -> list[Piece]:
        pieces = build_prompt(self.manifest, self.engine.tokenize, n_rows, instruction, system)
        if assistant_prefix:
            pieces.append(Tokens(tuple(self.engine.tokenize(assistant_prefix))))
        return pieces

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
        sequence = self.prefill(rows, instruction, system)
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
                   ) -> tuple[Iterator[Segment], TranscriptionInfo]:
        """(segments, info): a lazy generator of Segment, one window of audio per prompt.

        `timestamps`: "none" (one segment per window, timed by the window), "sentence" or
        "word" (segments hold their words). Times are seconds from the start of `audio`; a
        side the model left untimed is None. The audio is loaded (and checked) now, the work
        happens as the segments are consumed; `on_window(done, total)` follows the windows.
        `max_tokens` is per window (default: scaled to the window and the mode, prompt.py).
        """
        if timestamps not in TIMESTAMP_MODES:
            raise InputError(f"timestamps={timestamps!r}: choose one of {', '.join(TIMESTAMP_MODES)}")
        instruction = with_language(INSTRUCTIONS[timestamps], language)
        budget = max_tokens or transcription_budget(timestamps, window_seconds)
        self._check_context(window_seconds, instruction, system, budget)
        clock = time.perf_counter()
        samples = load_audio(audio, sample_rate)
        windows = plan_windows(samples, window_seconds)
        info = TranscriptionInfo(
            duration=len(samples) / SAMPLE_RATE, timestamps=timestamps, language=language,
            windows=[(w.start_s, w.end / SAMPLE_RATE) for w in windows],
            timings={"load_s": time.perf_counter() - clock, "encode_s": 0.0, "prefill_s": 0.0, "decode_s": 0.0})
        segments = self._transcribe_windows(samples, windows, timestamps, instruction, budget,
                                            Sampling(temperature, seed=seed), system, info.timings, on_window)
        return segments, info

    def _check_context(self, window_seconds: float, instruction: str, system: str | None, budget: int) -> None:
        """Refuse up front a window whose prompt and output cannot fit the context."""
        rows = math.ceil(window_seconds * self.manifest.audio.tokens_per_second) + 1
        prompt = build_prompt(self.manifest, self.engine.tokenize, rows, instruction, system)
        per_window = len(flat_ids(prompt, self.manifest.tokens.audio)) + budget
        needed = per_window * self.engine.n_seq  # the parallel windows share the context
        if needed > self.engine.n_ctx:
            raise InputError(f"{self.engine.n_seq} window(s) of {window_seconds:g} s need {needed} tokens of "
                             f"context ({per_window} each: prompt and {budget} output tokens); the context "
                             f"holds {self.engine.n_ctx}: use shorter windows, fewer output tokens, fewer "
                             "parallel windows or a larger n_ctx")

    def _transcribe_windows(self, samples: np.ndarray, windows: list[Window], mode: str, instruction: str,
                            budget: int, sampling: Sampling, system: str | None, timings: dict[str, float],
                            on_window: Callable[[int, int], None] | None) -> Iterator[Segment]:
        # Each group of windows takes the context afresh and is decoded whole before its
        # segments are handed out, so a consumer may interleave other calls between segments.
        stop = self.manifest.tokens.stop
        for first in range(0, len(windows), self.engine.n_seq):
            group = windows[first:first + self.engine.n_seq]
            clock = time.perf_counter()
            rows = [self.engine.encode(samples[w.start:w.end]) for w in group]
            timings["encode_s"] += time.perf_counter() - clock
            clock = time.perf_counter()
            if len(group) == 1:  # one window: decoded token by token on its own
                sequence = self.prefill(rows[0], instruction, system)
                prefilled = time.perf_counter()
                outputs = [list(sequence.decode(budget, stop, sampling))]
            else:
                sequences = self.engine.start_group(len(group))
                for sequence, window_rows in zip(sequences, rows):
                    sequence.prefill(self._pieces(len(window_rows), instruction, system), window_rows)
                prefilled = time.perf_counter()
                outputs = self.engine.decode_together(sequences, budget, stop, sampling)
            timings["prefill_s"] += prefilled - clock
            timings["decode_s"] += time.perf_counter() - prefilled
            for window, tokens in zip(group, outputs):
                for segment in parse_output(self.engine.detokenize(tokens), mode, window.duration_s):
                    yield shift(segment, window.start_s)
                if on_window:
                    on_window(window.index + 1, len(windows))

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
        sequence = self.prefill(rows, question, system, NO_THINKING if thinking is False else "")
        timings["prefill_s"] = time.perf_counter() - clock
        return AnswerStream(self._answer(sequence, len(samples) / SAMPLE_RATE, timings, max_tokens,
                                         thinking_budget, Sampling(temperature, top_k, top_p, seed)))

    def ask(self, audio: AudioSource, question: str, on_text: Callable[[AnswerDelta], None] | None = None,
            **options) -> Answer:
        """The whole answer (options as for ask_stream); `on_text` sees each delta as it comes."""
        stream = self.ask_stream(audio, question, **options)
        for delta in stream:
            if on_text:
                on_text(delta)
        return stream.answer

    def _answer(self, sequence: Sequence, audio_seconds: float, timings: dict[str, float], max_tokens: int,
                thinking_budget: int | None, sampling: Sampling) -> Generator[AnswerDelta, None, Answer]:
        prompt_tokens = sequence.n_past
        clock = time.perf_counter()
        completion = yield from answer_events(
            start=lambda n: sequence.decode(n, self.manifest.tokens.stop, sampling),
            eval_tokens=sequence.eval_tokens, token_bytes=self.engine.token_bytes,
            tags=ThinkTags.find(self.engine.tokenize), max_tokens=max_tokens, thinking_budget=thinking_budget,
            end_thinking=self.engine.tokenize(END_THINKING))
        timings["decode_s"] = time.perf_counter() - clock
        return Answer(**vars(completion), prompt_tokens=prompt_tokens, audio_seconds=audio_seconds,
                      timings=timings)

    # --- live ------------------------------------------------------------------------------

    def stream_session(self, timestamps: str = "sentence", **options) -> StreamingSession:
        """A live session to `feed` 16 kHz blocks to and `finish`; `options` are StreamConfig fields."""
        return StreamingSession(self.engine, StreamConfig(timestamps=timestamps, **options))

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
