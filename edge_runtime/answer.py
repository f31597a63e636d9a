"""Free-form answers (QA, captions, emotion, events, summaries) with Thinking models' reasoning apart.

A Thinking model opens its reply with `<think>`, reasons, closes with `</think>` and then
answers; an Instruct model answers at once. The ids of the two tags are read from the
vocabulary. A thinking budget caps the reasoning: once spent, `</think>` is forced into the
context and the model goes on with the answer.
"""
from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Callable, Generator, Iterator, Literal

# Assistant-turn prefix that skips the reasoning (Qwen3's `enable_thinking=False`).
NO_THINKING = "<think>\n\n</think>\n\n"
# Forced into the context when the thinking budget is spent.
END_THINKING = "\n</think>\n\n"


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
    finish_reason: Literal["stop", "length"]


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


def answer_events(start: Callable[[int], Iterator[int]], eval_tokens: Callable[[list[int]], None],
                  token_bytes: Callable[[int], bytes], tags: ThinkTags | None, max_tokens: int,
                  thinking_budget: int | None = None, end_thinking: list[int] | None = None,
                  ) -> Generator[AnswerDelta, None, Completion]:
    """Deltas of the reply after an evaluated prompt, then (as the return value) the Completion.

    `start(n)` yields at most n tokens (generate(): a token is evaluated only when the next is
    asked for). `max_tokens` covers thinking and answer; forced ids are not counted.
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
    thinking = texts["thinking"].text.rstrip() if tags and ids and ids[0] == tags.open else None
    return Completion(texts["answer"].text.rstrip(), thinking, ids,
                      "length" if generated >= max_tokens else "stop")


class AnswerStream:
    """Iterate for the AnswerDelta items; `answer` holds the whole Answer once they are done."""

    def __init__(self, events: Generator[AnswerDelta, None, "Answer"]):
        self._events = events
        self.answer: Answer | None = None

    def __iter__(self) -> Iterator[AnswerDelta]:
        self.answer = yield from self._events

    def close(self) -> None:
        self._events.close()
