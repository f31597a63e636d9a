"""Audio asked about more than once: encoded and prefilled once, then each question costs only
its own tokens.

`MossAudio.session(audio)` evaluates the prompt up to the end of the audio and keeps a copy of
that part of the KV cache (llama.cpp's sequence state). Each `ask` evaluates only the rest of
the prompt (audio end, the question, the assistant turn) and decodes. When another call on the
model has taken the context in between, the copy is put back first: no encoder run and no
audio prefill either way. The prompt is the one a fresh `ask` builds, cut where the audio ends
and evaluated in the same batches, so the answers are the same token for token
(docs/format.md#cached-audio).
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from .answer import Answer, AnswerDelta, AnswerMaker, AnswerStream
from .engine import Engine, Sampling, Sequence
from .prompt import ANSWER_TOKENS, END_THINKING, Piece, prompt_length, question_tail


class AudioSession:
    """Questions about one clip; `restores` counts the times its cache was put back."""

    def __init__(self, engine: Engine, head: list[Piece], rows: np.ndarray, audio_seconds: float,
                 answer: AnswerMaker, encode_s: float):
        self._engine = engine
        self._answer = answer
        self.audio_seconds = audio_seconds
        clock = time.perf_counter()
        self._sequence = engine.start(head, rows, room=ANSWER_TOKENS)
        self._saved = self._sequence.save()
        self.timings = {"encode_s": encode_s, "prefill_s": time.perf_counter() - clock}
        self.restores = 0

    @property
    def audio_positions(self) -> int:
        """Positions of the cached prompt head and audio."""
        return self._saved.n_past

    def ask_stream(self, question: str, thinking: bool | None = None, thinking_budget: int | None = None,
                   max_tokens: int = ANSWER_TOKENS, temperature: float = 0.0, top_k: int = 50, top_p: float = 1.0,
                   seed: int | None = None) -> AnswerStream:
        """As `MossAudio.ask_stream` on this session's audio; `timings` count this question only."""
        clock = time.perf_counter()
        tail = question_tail(self._engine.manifest, self._engine.tokenize, question, thinking)
        room = prompt_length(tail) + max_tokens + len(self._engine.tokenize(END_THINKING))
        sequence = self._take(room)
        sequence.prefill(tail)
        timings = {"encode_s": 0.0, "prefill_s": time.perf_counter() - clock}
        return AnswerStream(self._answer(sequence, self.audio_seconds, timings, max_tokens, thinking_budget,
                                         Sampling(temperature, top_k, top_p, seed)))

    def ask(self, question: str, on_text: Callable[[AnswerDelta], None] | None = None, **options) -> Answer:
        return self.ask_stream(question, **options).collect(on_text)

    def _take(self, room: int) -> Sequence:
        """The cached audio, alone in the sequence, with `room` positions after it."""
        end = self._saved.n_past
        if self._engine.owns(self._sequence) and end + room <= self._engine.n_ctx:
            self._sequence.truncate(end)  # the last question and answer go
            return self._sequence
        self._sequence = self._engine.start_group(1, end + room)[0]
        self._sequence.restore(self._saved)
        self.restores += 1
        return self._sequence
