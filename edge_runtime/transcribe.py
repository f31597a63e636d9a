"""Offline inference: audio -> log-mel -> encoder rows -> prompt -> llama.cpp -> text."""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Generator, Iterator

import numpy as np

from .answer import END_THINKING, NO_THINKING, Answer, AnswerDelta, AnswerStream, ThinkTags, answer_events
from .audio import AudioSource, load_audio
from .bundle import Bundle, BundleError, load_bundle
from .device import DevicePlan, resolve_device
from .encoder import AudioEncoder
from .features import SAMPLE_RATE, log_mel_spectrogram
from .llm import LlamaModel, generate
from .prompt import INSTRUCTIONS, Piece, Tokens, build_prompt, flat_ids, with_language
from .timestamps import Segment, parse_output, shift
from .windows import Window, plan_windows

if TYPE_CHECKING:  # stream.py imports this module
    from .stream import StreamEvent

GGUF_MODEL_TYPE_KEY = "moss_audio_edge.model_type"
TIMESTAMP_MODES = tuple(INSTRUCTIONS)
# Default output budget per second of window: words, plus the stamps the mode asks for.
OUTPUT_TOKENS_PER_SECOND = {"none": 10, "sentence": 16, "word": 50}


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


def evaluate_prompt(llm: LlamaModel, pieces: list[Piece], rows: np.ndarray) -> None:
    """Feed the pieces in order: token runs as token batches, audio runs as embedding batches."""
    for piece in pieces:
        if isinstance(piece, Tokens):
            llm.eval_tokens(piece.ids)
        else:
            llm.eval_embeddings(rows[piece.start:piece.start + piece.count])


class MossAudio:
    """A loaded bundle: `MossAudio("bundle_dir").transcribe(audio)`, `.ask(audio, question)`,
    or the raw `.generate(audio, instruction)`.

    `device` ("auto", "cpu", "cuda", "tensorrt", "metal") picks the encoder's onnxruntime
    providers and llama.cpp's GPU offload (see device.py); `gpu_layers` overrides the latter.
    """

    def __init__(self, bundle: str | Path | Bundle, device: str = "auto", threads: int | None = None,
                 n_ctx: int = 8192, gpu_layers: int | None = None, kv_type: str = "f16",
                 flash_attention: str = "auto", verify_hashes: bool = False, strict_device: bool = False):
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, verify_hashes)
        m = self.bundle.manifest
        # a quantized bundle names the device it was made for (its preset); arguments win
        hints = m.quantization.get("runtime", {})
        if device == "auto":
            device = hints.get("device", device)
        threads = threads or hints.get("threads")
        gpu_layers = hints.get("gpu_layers") if gpu_layers is None else gpu_layers
        self.device: DevicePlan = resolve_device(device, strict_device)
        self.encoder = AudioEncoder(self.bundle.encoder_path, m.audio, m.model.row_width,
                                    providers=self.device.providers, threads=threads)
        self.llm = LlamaModel(self.bundle.llm_path, n_ctx=n_ctx, threads=threads,
                              gpu_layers=self.device.gpu_layers if gpu_layers is None else gpu_layers,
                              kv_type=kv_type, flash_attention=flash_attention)
        # Equal row widths do not prove matching files: hidden * (1 + K) can coincide
        if self.llm.n_embd != m.model.hidden_size:
            raise BundleError(f"{self.bundle.llm_path}: LLM hidden size is {self.llm.n_embd}, the "
                              f"manifest says {m.model.hidden_size} (mismatched files)")
        if self.llm.n_embd_inp != m.model.row_width:
            raise BundleError(f"{self.bundle.llm_path}: takes rows of {self.llm.n_embd_inp} floats, the "
                              f"manifest's encoder gives {m.model.row_width} (mismatched files)")
        gguf_type = self.llm.metadata(GGUF_MODEL_TYPE_KEY)
        if gguf_type != m.model.model_type:
            raise BundleError(f"{self.bundle.llm_path}: GGUF model type {gguf_type!r} does not match "
                              f"the manifest's {m.model.model_type!r}")

    @property
    def manifest(self):
        return self.bundle.manifest

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """16 kHz mono float32 samples -> encoder rows [N, row_width]."""
        return self.encoder.encode(log_mel_spectrogram(audio))

    def prefill(self, rows: np.ndarray, instruction: str, system: str | None = None,
                assistant_prefix: str = "") -> int:
        """Reset the context and evaluate the whole prompt; returns its length in tokens.
        `assistant_prefix` is text the reply is taken to begin with."""
        pieces = build_prompt(self.manifest, self.llm.tokenize, len(rows), instruction, system)
        if assistant_prefix:
            pieces.append(Tokens(tuple(self.llm.tokenize(assistant_prefix))))
        self.llm.reset()
        evaluate_prompt(self.llm, pieces, rows)
        return self.llm.n_past

    def stream_tokens(self, max_new_tokens: int, temperature: float = 0.0, top_k: int = 50,
                      top_p: float = 1.0, seed: int | None = None) -> Iterator[int]:
        return generate(self.llm, max_new_tokens, self.manifest.tokens.stop, temperature, top_k, top_p, seed)

    def generate(self, audio: str | Path | bytes | np.ndarray, instruction: str,
                 sample_rate: int | None = None, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_k: int = 50, top_p: float = 1.0, seed: int | None = None,
                 system: str | None = None, on_token: Callable[[int], None] | None = None) -> Generation:
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        samples = load_audio(audio, sample_rate)
        timings["load_s"] = time.perf_counter() - clock
        clock = time.perf_counter()
        rows = self.encode(samples)
        timings["encode_s"] = time.perf_counter() - clock
        clock = time.perf_counter()
        prompt_tokens = self.prefill(rows, instruction, system)
        timings["prefill_s"] = time.perf_counter() - clock
        clock = time.perf_counter()
        tokens: list[int] = []
        for token in self.stream_tokens(max_new_tokens, temperature, top_k, top_p, seed):
            tokens.append(token)
            if on_token:
                on_token(token)
        timings["decode_s"] = time.perf_counter() - clock
        seconds = len(samples) / self.manifest.audio.sample_rate
        return Generation(text=self.llm.detokenize(tokens), token_ids=tokens, prompt_tokens=prompt_tokens,
                          audio_tokens=len(rows), audio_seconds=seconds, timings=timings)

    # --- transcription ---------------------------------------------------------------------

    def transcribe(self, audio: AudioSource, timestamps: str = "sentence", language: str | None = None,
                   sample_rate: int | None = None, window_seconds: float = 30.0,
                   max_new_tokens: int | None = None, temperature: float = 0.0, seed: int | None = None,
                   system: str | None = None, on_window: Callable[[int, int], None] | None = None,
                   ) -> tuple[Iterator[Segment], TranscriptionInfo]:
        """(segments, info): a lazy generator of Segment, one window of audio per prompt.

        `timestamps`: "none" (one segment per window, timed by the window), "sentence" or
        "word" (segments hold their words). Times are seconds from the start of `audio`; a
        side the model left untimed is None. The audio is loaded (and checked) now, the work
        happens as the segments are consumed; `on_window(done, total)` follows the windows.
        `max_new_tokens` is per window (default: scaled to the window and the mode).
        """
        if timestamps not in TIMESTAMP_MODES:
            raise ValueError(f"timestamps={timestamps!r}: choose one of {', '.join(TIMESTAMP_MODES)}")
        instruction = with_language(INSTRUCTIONS[timestamps], language)
        budget = max_new_tokens or max(64, math.ceil(window_seconds * OUTPUT_TOKENS_PER_SECOND[timestamps]))
        self._check_context(window_seconds, instruction, system, budget)
        clock = time.perf_counter()
        samples = load_audio(audio, sample_rate)
        windows = plan_windows(samples, window_seconds)
        info = TranscriptionInfo(
            duration=len(samples) / SAMPLE_RATE, timestamps=timestamps, language=language,
            windows=[(w.start_s, w.end / SAMPLE_RATE) for w in windows],
            timings={"load_s": time.perf_counter() - clock, "encode_s": 0.0, "prefill_s": 0.0, "decode_s": 0.0})
        segments = self._transcribe_windows(samples, windows, timestamps, instruction, budget, temperature,
                                            seed, system, info.timings, on_window)
        return segments, info

    def _check_context(self, window_seconds: float, instruction: str, system: str | None, budget: int) -> None:
        """Refuse up front a window whose prompt and output cannot fit the context."""
        rows = math.ceil(window_seconds * self.manifest.audio.tokens_per_second) + 1
        prompt = build_prompt(self.manifest, self.llm.tokenize, rows, instruction, system)
        needed = len(flat_ids(prompt, self.manifest.tokens.audio)) + budget
        if needed > self.llm.n_ctx:
            raise ValueError(f"a {window_seconds:g} s window needs {needed} tokens of context (prompt and "
                             f"{budget} output tokens); the context holds {self.llm.n_ctx}: use shorter "
                             "windows, fewer output tokens or a larger n_ctx")

    def _transcribe_windows(self, samples: np.ndarray, windows: list[Window], mode: str, instruction: str,
                            budget: int, temperature: float, seed: int | None, system: str | None,
                            timings: dict[str, float], on_window: Callable[[int, int], None] | None,
                            ) -> Iterator[Segment]:
        for window in windows:
            clock = time.perf_counter()
            rows = self.encode(samples[window.start:window.end])
            timings["encode_s"] += time.perf_counter() - clock
            clock = time.perf_counter()
            self.prefill(rows, instruction, system)
            timings["prefill_s"] += time.perf_counter() - clock
            clock = time.perf_counter()
            text = self.llm.detokenize(list(self.stream_tokens(budget, temperature, seed=seed)))
            timings["decode_s"] += time.perf_counter() - clock
            for segment in parse_output(text, mode, window.duration_s):
                yield shift(segment, window.start_s)
            if on_window:
                on_window(window.index + 1, len(windows))

    # --- questions -------------------------------------------------------------------------

    def ask_stream(self, audio: AudioSource, question: str, sample_rate: int | None = None,
                   thinking: bool | None = None, thinking_budget: int | None = None, max_tokens: int = 512,
                   temperature: float = 0.0, top_k: int = 50, top_p: float = 1.0, seed: int | None = None,
                   system: str | None = None) -> AnswerStream:
        """Iterate for AnswerDelta("thinking" | "answer", text); `.answer` is the Answer at the end.

        `thinking`: None lets the model do as it was trained, False makes a Thinking model
        answer at once, True changes nothing (an Instruct model never thinks).
        `thinking_budget`: reasoning tokens after which `</think>` is forced. The audio is
        loaded, encoded and the prompt evaluated now; tokens come as the stream is consumed.
        """
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        samples = load_audio(audio, sample_rate)
        rows = self.encode(samples)
        timings["encode_s"] = time.perf_counter() - clock
        clock = time.perf_counter()
        prompt_tokens = self.prefill(rows, question, system, NO_THINKING if thinking is False else "")
        timings["prefill_s"] = time.perf_counter() - clock
        return AnswerStream(self._answer(prompt_tokens, len(samples) / SAMPLE_RATE, timings, max_tokens,
                                         thinking_budget, temperature, top_k, top_p, seed))

    def ask(self, audio: AudioSource, question: str, on_text: Callable[[AnswerDelta], None] | None = None,
            **options) -> Answer:
        """The whole answer (options as for ask_stream); `on_text` sees each delta as it comes."""
        stream = self.ask_stream(audio, question, **options)
        for delta in stream:
            if on_text:
                on_text(delta)
        return stream.answer

    def _answer(self, prompt_tokens: int, audio_seconds: float, timings: dict[str, float], max_tokens: int,
                thinking_budget: int | None, temperature: float, top_k: int, top_p: float,
                seed: int | None) -> Generator[AnswerDelta, None, Answer]:
        clock = time.perf_counter()
        completion = yield from answer_events(
            start=lambda n: self.stream_tokens(n, temperature, top_k, top_p, seed),
            eval_tokens=self.llm.eval_tokens, token_bytes=self.llm.token_bytes,
            tags=ThinkTags.find(self.llm.tokenize), max_tokens=max_tokens, thinking_budget=thinking_budget,
            end_thinking=self.llm.tokenize(END_THINKING))
        timings["decode_s"] = time.perf_counter() - clock
        return Answer(**vars(completion), prompt_tokens=prompt_tokens, audio_seconds=audio_seconds,
                      timings=timings)

    def stream(self, source, timestamps: str = "sentence", sample_rate: int = 16000,
               **options) -> Iterator["StreamEvent"]:
        """Live transcription events (`partial`, `final`, `status`) from a block source: an
        iterable of `capture.Block`s (microphone_blocks, file_blocks) or of numpy sample
        blocks at `sample_rate`. `options` are StreamConfig fields."""
        from .capture import Block, array_blocks
        from .stream import StreamConfig, stream_events  # stream builds on this module

        blocks = iter(source)
        first = next(blocks, None)
        if first is None:
            return
        chained = itertools.chain([first], blocks)
        if not isinstance(first, Block):
            chained = array_blocks(chained, sample_rate)
        config = StreamConfig(timestamps=timestamps, **options)
        yield from stream_events(self, chained, config)
