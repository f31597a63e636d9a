"""Live transcription: exact incremental inference over an unbounded audio stream.

Voice activity opens a *window* at the start of an utterance. Each 4 s chunk of the window
is encoded once, the moment it is complete, and appended to the KV cache with its time
markers (docs/format.md#chunked-audio-encoder, #time-markers: the result equals the offline prompt). A *readout* evaluates the
instruction suffix after the audio so far, decodes, and removes the suffix again, so audio
is never prefilled twice; the previous readout is verified as a draft in one batch, which
gives the same tokens as plain greedy decoding. Text stable across two readouts is
committed; the window closes when the utterance ends (or rolls over past a length limit,
restarting from the first uncommitted audio), and its remaining text becomes final.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from .capture import Block, DeviceLost
from .engine import Engine, Sequence
from .features import HOP_LENGTH, SAMPLE_RATE, LogMelStream
from .prompt import INSTRUCTIONS, audio_span, prompt_head, prompt_tail, readout_budget
from .timestamps import Segment, Word, parse_output, shift
from .vad import VadConfig, VoiceActivity


@dataclass
class StreamEvent:
    type: str  # "partial" (may still change), "final" (never changes) or "status"
    start: float | None = None  # seconds on the stream clock
    end: float | None = None
    text: str = ""
    timed: bool = True  # False when the model gave no usable times and the window's are used
    words: list[Word] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # status details: lag_s, dropped_s, vad, ...

    def to_dict(self) -> dict:
        if self.type == "status":
            return {"type": "status", **self.info}
        event = {"type": self.type, "start": self.start, "end": self.end, "text": self.text, "timed": self.timed}
        if self.words:
            event["words"] = [{"start": w.start, "end": w.end, "text": w.text} for w in self.words]
        return event


@dataclass(frozen=True)
class StreamConfig:
    timestamps: str = "sentence"  # none | sentence | word: the prompt asked of the model
    vad: VadConfig = VadConfig()
    speech_pad_s: float = 0.3  # audio kept before the detected start and after the end of speech
    max_window_s: float = 30.0  # past this the window rolls over
    partial_tokens: int = 96  # decode budget of a readout while the window is open
    final_tokens: int = 256  # decode budget of the closing readout
    # Runaway guard: a readout decodes at most 16 + this many tokens per second of audio
    # (None: the offline default for the timestamp mode); a model's end token stops sooner.
    tokens_per_second: float | None = None
    use_drafts: bool = True
    commit_guard_s: float = 1.0  # a segment ending this close to the audio end is not committed
    max_lag_s: float = 2.0  # behind real time by more than this: skip partial readouts


@dataclass
class _Window:
    start: int  # stream sample of the window's first sample
    sequence: Sequence  # its hold on the engine's context
    mel: LogMelStream = field(default_factory=LogMelStream)
    rows: list[np.ndarray] = field(default_factory=list)
    n_tokens: int = 0
    kv_end: int = 0  # KV position after the last fully appended chunk
    committed: int = 0  # segments of the readout already emitted as final
    draft: list[int] = field(default_factory=list)
    last_segments: list[Segment] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """Audio the model has heard: the encoded frames (received audio may run ahead)."""
        return self.mel.frames_done * HOP_LENGTH / SAMPLE_RATE


class StreamingSession:
    """Feed 16 kHz blocks with `feed`, end with `finish`; both return events."""

    def __init__(self, engine: Engine, config: StreamConfig):
        self.engine = engine
        self.manifest = engine.manifest
        self.config = config
        self.vad = VoiceActivity(config.vad)
        self.tail_ids = prompt_tail(self.manifest, engine.tokenize, INSTRUCTIONS[config.timestamps])[0].ids
        self.clock = 0  # samples received
        self.history = np.zeros(0, dtype=np.float32)  # recent audio, for pre-roll and rollover
        self.history_start = 0
        self.window: _Window | None = None
        self.last_window_end = 0
        # (start, end) stream samples and the closing readout's tokens of each closed window
        self.closed_windows: list[tuple[int, int, list[int]]] = []
        self.readout_stats = {"readouts": 0, "draft_tokens": 0, "accepted_tokens": 0, "decoded_tokens": 0,
                              "readout_s": 0.0}

    # --- audio in ------------------------------------------------------------------------

    def feed(self, samples: np.ndarray, lag_s: float = 0.0) -> list[StreamEvent]:
        samples = np.asarray(samples, dtype=np.float32)
        events: list[StreamEvent] = []
        self._remember(samples)
        for vad_event in self.vad.feed(samples):
            if vad_event.kind == "start" and self.window is None:
                begin = max(self.history_start, self.last_window_end,
                            vad_event.sample - int(self.config.speech_pad_s * SAMPLE_RATE))
                self._open(begin)
                events.append(StreamEvent("status", info={"vad": "speech", "at": begin / SAMPLE_RATE}))
            elif vad_event.kind == "end" and self.window is not None:
                end = vad_event.sample + int(self.config.speech_pad_s * SAMPLE_RATE)
                events += self._advance(self._audio(self._window_end(), min(end, self.clock)), lag_s)
                events += self._close()
                events.append(StreamEvent("status", info={"vad": "silence", "at": end / SAMPLE_RATE}))
        if self.window is not None:  # a window holds all audio up to the clock
            events += self._advance(self._audio(self._window_end(), self.clock), lag_s)
        return events

    def finish(self) -> list[StreamEvent]:
        """End of input: close the open window, everything becomes final."""
        return self._close() if self.window is not None else []

    def _remember(self, samples: np.ndarray) -> None:
        keep = int((self.config.max_window_s + 5.0) * SAMPLE_RATE)
        self.history = np.concatenate([self.history, samples])[-keep:]
        self.clock += len(samples)
        self.history_start = self.clock - len(self.history)

    def _audio(self, start: int, end: int) -> np.ndarray:
        return self.history[max(0, start - self.history_start):max(0, end - self.history_start)]

    def _window_end(self) -> int:
        return self.window.start + self.window.mel.n_samples

    # --- windows -------------------------------------------------------------------------

    def _open(self, start: int) -> None:
        sequence = self.engine.start(prompt_head(self.manifest, self.engine.tokenize))
        self.window = _Window(start=start, sequence=sequence, kv_end=sequence.n_past)

    def _advance(self, samples: np.ndarray, lag_s: float) -> list[StreamEvent]:
        """Append audio to the open window; encode and read out each completed chunk."""
        window = self.window
        window.mel.append(samples)
        events: list[StreamEvent] = []
        frames = self.manifest.audio.chunk_frames
        while window.mel.ready_frames() >= frames:
            self._append_rows(window.mel.take(frames), full_chunk=True)
            if window.seconds >= self.config.max_window_s:
                events += self._rollover()
                window = self.window
            elif lag_s <= self.config.max_lag_s:
                events += self._partial(self._readout(self.config.partial_tokens))
        return events

    def _append_rows(self, mel: np.ndarray, full_chunk: bool) -> None:
        """Encode one chunk and extend the KV cache with its rows and time markers. The
        last chunk of a multi-chunk window is zero-padded to full width, as offline."""
        window = self.window
        width = self.manifest.audio.chunk_frames if (full_chunk or window.rows) else mel.shape[1]
        rows = self.engine.encode_chunk(mel, width)
        window.sequence.truncate(window.kv_end)
        all_rows = np.concatenate(window.rows + [rows])
        window.sequence.prefill(audio_span(self.manifest, len(all_rows), window.n_tokens), all_rows)
        window.rows.append(rows)  # only once the KV cache holds it: an interruption leaves no half chunk
        window.n_tokens = len(all_rows)
        window.kv_end = window.sequence.n_past

    def _close(self) -> list[StreamEvent]:
        window = self.window
        tail = window.mel.finish()
        if tail.shape[1] > 0:
            self._append_rows(tail, full_chunk=False)
        events = self._final(self._readout(self.config.final_tokens), everything=True)
        self.last_window_end = self._window_end()
        self.closed_windows.append((window.start, self.last_window_end, list(window.draft)))
        self.window = None
        return events

    def _rollover(self) -> list[StreamEvent]:
        """Past the length limit: commit what is timed and complete, then start a new
        window at the first uncommitted audio, carrying timestamps forward."""
        window = self.window
        text = self._readout(self.config.final_tokens)
        segments = self._segments(text)
        encoded_end = window.start + window.mel.frames_done * self.manifest.audio.hop_length
        if len(segments) > 1 and segments[-2].timed:  # the last (possibly cut) one starts the next window
            events = self._final(text, everything=False)
            restart = window.start + int(segments[-2].end * SAMPLE_RATE)
        else:
            events = self._final(text, everything=True)
            restart = encoded_end
        self.closed_windows.append((window.start, restart, list(window.draft)))
        received = self._window_end()
        self._open(restart)
        return events + self._advance(self._audio(restart, received), lag_s=0.0)

    # --- readouts ------------------------------------------------------------------------

    def _readout(self, budget: int) -> str:
        """Greedy text after the audio so far; the KV cache is left as it was."""
        started = time.perf_counter()
        window = self.window
        budget = min(budget, readout_budget(self.config.timestamps, window.seconds, self.config.tokens_per_second))
        window.sequence.truncate(window.kv_end)  # drop anything an interrupted readout left behind
        result = window.sequence.readout(self.tail_ids, budget, self.manifest.tokens.stop,
                                         window.draft if self.config.use_drafts else ())
        stats = self.readout_stats
        stats["readouts"] += 1
        stats["draft_tokens"] += result.draft_tokens
        stats["accepted_tokens"] += result.accepted_tokens
        stats["decoded_tokens"] += result.decoded_tokens
        stats["readout_s"] += time.perf_counter() - started
        window.draft = result.tokens
        return self.engine.detokenize(result.tokens)

    def _segments(self, text: str) -> list[Segment]:
        return parse_output(text, self.config.timestamps, self.window.seconds)

    def _partial(self, text: str) -> list[StreamEvent]:
        window = self.window
        segments = self._segments(text)
        stable = window.committed  # commit timed segments unchanged since the last readout,
        while (stable < len(segments) - 1 and stable < len(window.last_segments)  # never the last,
               and segments[stable].timed and segments[stable] == window.last_segments[stable]
               and segments[stable].end <= window.seconds - self.config.commit_guard_s):  # nor near the end
            stable += 1
        window.last_segments = segments
        events = self._emit_final(segments[window.committed:stable])
        rest = segments[window.committed:]
        if rest:
            start = rest[0].start if rest[0].timed else self._time_before(segments, window.committed)
            text = " ".join(s.text for s in rest)
            events.append(self._event("partial", Segment(start, window.seconds, text), timed=rest[0].timed))
        return events

    def _final(self, text: str, everything: bool) -> list[StreamEvent]:
        """Every segment not yet committed becomes final; `everything` false keeps the last."""
        segments = self._segments(text)
        end = len(segments) if everything else len(segments) - 1
        return self._emit_final(segments[self.window.committed:end], segments)

    def _time_before(self, segments: list[Segment], index: int) -> float:
        return next((s.end for s in reversed(segments[:index]) if s.timed), 0.0)

    def _emit_final(self, chosen: list[Segment], context: list[Segment] | None = None) -> list[StreamEvent]:
        """Final events; untimed text gets the gap between its timed neighbours, marked untimed."""
        window = self.window
        first = window.committed
        window.committed += len(chosen)
        events = []
        for i, segment in enumerate(chosen, start=first):
            if not segment.timed:
                following = [s.start for s in (context or [])[i + 1:] if s.timed]
                segment = Segment(self._time_before(context or [], i), following[0] if following else window.seconds,
                                  segment.text)
                events.append(self._event("final", segment, timed=False))
            else:
                events.append(self._event("final", segment))
        return events

    def _event(self, kind: str, segment: Segment, timed: bool = True) -> StreamEvent:
        moved = shift(segment, self.window.start / SAMPLE_RATE)
        return StreamEvent(kind, moved.start, moved.end, moved.text, timed, moved.words)


def stream_events(blocks: Iterable[Block], session: StreamingSession) -> Iterator[StreamEvent]:
    """Run a session over a block source, with lag and dropped-input status events. A lost
    device ends the stream cleanly; keep the `session` to flush it yourself on Ctrl-C."""
    config = session.config
    try:
        for block in blocks:
            lag = max(0.0, time.monotonic() - block.captured_at)
            if block.dropped_samples or block.xrun:
                yield StreamEvent("status", info={"dropped_s": block.dropped_samples / SAMPLE_RATE,
                                                  "xrun": block.xrun})
            if lag > config.max_lag_s:
                yield StreamEvent("status", info={"lag_s": round(lag, 2), "readouts": "skipped"})
            yield from session.feed(block.samples, lag_s=lag)
    except DeviceLost as exc:
        yield StreamEvent("status", info={"stopped": str(exc)})
    yield from session.finish()
