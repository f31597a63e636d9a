"""The streaming path and its offline equivalent, shared by the streaming tests."""
from __future__ import annotations

import time

import numpy as np

from edge_runtime.features import log_mel_frames, normalize_log_mel
from edge_runtime.transcribe import MossAudio


def running_max_mel(audio: np.ndarray, frames: int | None = None, chunk_frames: int = 400) -> np.ndarray:
    """What the live front end computes, written out directly: offline frames, each chunk
    clamped with the maximum over all frames up to its end. `frames` < len(audio) // 160
    takes the first frames of a longer signal: a window cut while audio kept coming."""
    frames = frames or len(audio) // 160
    padded = np.pad(audio.astype(np.float64), 200, mode="reflect")
    raw = log_mel_frames(padded[: (frames - 1) * 160 + 400])
    chunks = [normalize_log_mel(raw[:, lo:lo + chunk_frames], raw[:, :lo + chunk_frames].max())
              for lo in range(0, frames, chunk_frames)]
    return np.concatenate(chunks, axis=1)


def offline_tokens(model: MossAudio, audio: np.ndarray, instruction: str, budget: int,
                   frames: int | None = None) -> list[int]:
    rows = model.engine.encoder.encode(running_max_mel(audio, frames))
    return list(model.prefill(rows, instruction).decode(budget, model.manifest.tokens.stop))


def offline_choice_gaps(model: MossAudio, audio: np.ndarray, instruction: str, tokens: list[int]) -> np.ndarray:
    """How far below the offline model's best logit each streamed token lies, with the streamed
    tokens as context (0 where it is the offline greedy choice); the last entry is for the
    stop token that ended the window."""
    rows = model.engine.encoder.encode(running_max_mel(audio))
    sequence = model.prefill(rows, instruction)
    first = sequence.logits()[None]
    logits = np.concatenate([first, sequence.eval_tokens(tokens, logits_from=0)]) if tokens else first
    best = logits.max(axis=1)
    chosen = logits[np.arange(len(tokens)), tokens]
    stop = logits[-1, list(model.manifest.tokens.stop)].max()
    return np.append(best[:-1] - chosen, best[-1] - stop)


def run_session(model: MossAudio, audio: np.ndarray, block: int = 1600, **options):
    session = model.stream_session(**options)
    events = []
    for lo in range(0, len(audio), block):
        for event in session.feed(audio[lo:lo + block]):
            events.append((session.clock, event))
    events += [(session.clock, e) for e in session.finish()]
    return session, events


def slowed(session, seconds_per_block: float):
    """`session` with a `feed` that first sleeps: a consumer slower than a fast live source."""
    feed = session.feed

    def slow_feed(samples, lag_s: float = 0.0):
        time.sleep(seconds_per_block)
        return feed(samples, lag_s)

    session.feed = slow_feed
    return session
