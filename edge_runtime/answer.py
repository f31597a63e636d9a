"""Free-form answers (QA, captions, emotion, events, summaries) with Thinking models' reasoning apart.

A Thinking model opens its reply with `<think>`, reasons, closes with `</think>` and then
answers; an Instruct model answers at once. The ids of the two tags are read from the
vocabulary. A thinking budget caps the reasoning: once spent, `</think>` is forced into the
context and the model goes on with the answer.
"""
from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Generator, Iterator, Literal

from .loop_guard import LoopGuard

if TYPE_CHECKING:
    from .engine import Sampling, Sequence



@dataclass(frozen=True)
class ThinkTags:
    open: int
    close: int

    @classmethod
    def find(cls, tokenize: Callable[[str], list[int]]) -> "ThinkTags | None":
        """The tags' ids when the vocabulary has each as one token (Qwen3's does)."""
        ids = tokenize("<think>"), tokenize("</think>")
        return cls(ids[0][0], ids[1][0]) if all(len(i) == 1 for i in ids) else None


@dataclass(frozen=True)
class AnswerDelta:
    kind: Literal["thinking", "answer"]
    text: str


@dataclass
class Completion:
    text: str
    thinking: str | None  # None: the model did not think
    token_ids: list[int]  # generated ids, tags and forced ids included
    finish_reason: Literal["stop", "length", "repetition"]


@dataclass
class Answer(Completion):
    prompt_tokens: int = 0
    audio_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


class _Text:
    """Bytes of tokens -> text deltas; holds back a character split across tokens."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.text = ""

    def add(self, data: bytes, final: bool = False) -> str:
        delta = self._decoder.decode(data, final)
        if not self.text:
            delta = delta.lstrip()  # the newlines after a tag are not part of either text
        self.text += delta
        return delta

    def drop(self, data: bytes) -> None:
        """Take the text of `data`, the last bytes added, back off the end."""
        tail = data.decode("utf-8", errors="replace")
        self.text = self.text[:max(0, len(self.text) - len(tail))]


def answer_events(start: Callable[[int], Iterator[int]], eval_tokens: Callable[[list[int]], None],
                  token_bytes: Callable[[int], bytes], tags: ThinkTags | None, max_tokens: int,
                  thinking_budget: int | None = None, end_thinking: list[int] | None = None,
                  guard: LoopGuard | None = None) -> Generator[AnswerDelta, None, Completion]:
    """Deltas of the reply after an evaluated prompt, then (as the return value) the Completion.

    `start(n)` yields at most n tokens (generate(): a token is evaluated only when the next is
    asked for) and stops when the loop `guard` it feeds trips: the loop was streamed already,
    but the Completion leaves it out. `max_tokens` covers thinking and answer; forced ids are
    not counted.
    """
    texts = {"thinking": _Text(), "answer": _Text()}
    phase: Literal["thinking", "answer"] = "answer"
    ids: list[int] = []
    generated = thought = 0
    tokens = start(max_tokens)
    while (token := next(tokens, None)) is not None:
        ids.append(token)
        generated += 1
        if tags and generated == 1 and token == tags.open:
            phase = "thinking"
        elif tags and phase == "thinking" and token == tags.close:
            phase = "answer"
        else:
            if delta := texts[phase].add(token_bytes(token)):
                yield AnswerDelta(phase, delta)
            thought += phase == "thinking"
        if phase == "thinking" and thinking_budget is not None and thought >= thinking_budget:
            tokens.close()  # `token` was handed out but not evaluated: evaluate it with the close
            forced = end_thinking or []
            eval_tokens([token, *forced])
            ids += forced
            phase = "answer"
            tokens = start(max_tokens - generated)
    for kind, text in texts.items():
        if delta := text.add(b"", final=True):
            yield AnswerDelta(kind, delta)  # type: ignore[arg-type]
    if guard is not None and guard.tripped:  # the loop is the end of the current phase's text
        looped = guard.tokens[guard.keep:]
        texts[phase].drop(b"".join(token_bytes(t) for t in looped))
        ids = ids[:len(ids) - len(looped)]
        reason = "repetition"
    else:
        reason = "length" if generated >= max_tokens else "stop"
    thinking = texts["thinking"].text.rstrip() if tags and ids and ids[0] == tags.open else None
    return Completion(texts["answer"].text.rstrip(), thinking, ids, reason)


# MossAudio's answer loop over an evaluated prompt: (sequence, audio seconds, timings, max_tokens,
# thinking_budget, sampling) -> AnswerDelta items, then the Answer. Sessions that keep audio in
# the cache (audio_session.py, stream.py) evaluate the question and hand over to it.
AnswerMaker = Callable[["Sequence", float, dict, int, "int | None", "Sampling"], Generator[AnswerDelta, None, Answer]]


class AnswerStream:
    """Iterate for the AnswerDelta items; `answer` holds the whole Answer once they are done."""

    def __init__(self, events: Generator[AnswerDelta, None, "Answer"]):
        self._events = events
        self.answer: Answer | None = None

    def __iter__(self) -> Iterator[AnswerDelta]:
        self.answer = yield from self._events

    def collect(self, on_text: Callable[[AnswerDelta], None] | None = None) -> Answer:
        """Consume the deltas (each to `on_text`, if given) and return the whole Answer."""
        for delta in self:
            if on_text:
                on_text(delta)
        return self.answer

    def close(self) -> None:
        self._events.close()
