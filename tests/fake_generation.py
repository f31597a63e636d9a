"""Hand-written model outputs through the real pipeline.

The tiny test models have random weights, so what they write never parses into meaningful
timestamps. `script_outputs` replaces only the sampling step (`engine.Sequence.decode`):
audio loading, windowing, encoding and prefill still run for real, and the scripted text is
tokenized by the bundle's own vocabulary, as if the model had generated it.
"""
from __future__ import annotations

from typing import Callable, Iterator

import pytest

from edge_runtime.engine import Sequence
from edge_runtime.transcribe import MossAudio


def script_outputs(monkeypatch: pytest.MonkeyPatch, model: MossAudio,
                   outputs: list[str] | Callable[[int], str]) -> list[int]:
    """Call i of the sampling step yields the tokens of outputs[i] (or outputs(i)), cut at its
    token budget. Returns the list of prompt lengths seen, one per call."""
    calls: list[int] = []

    def fake(sequence: Sequence, max_tokens: int, *args, **kwargs) -> Iterator[int]:
        text = outputs(len(calls)) if callable(outputs) else outputs[len(calls)]
        calls.append(sequence.n_past)
        yield from model.engine.tokenize(text)[:max_tokens]

    monkeypatch.setattr(Sequence, "decode", fake)
    return calls
