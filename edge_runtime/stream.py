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

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Generator, Iterable, Iterator

import numpy as np

from .answer import Answer, AnswerDelta, AnswerMaker, AnswerStream
from .capture import Block, DeviceLost
from .engine import Engine, Sampling, Sequence
from .errors import InputError
from .features import HOP_LENGTH, SAMPLE_RATE, LogMelStream
from .loop_guard import LoopGuardConfig, new_guard
from .prompt import (ANSWER_TOKENS, INSTRUCTIONS, audio_span, prompt_head, prompt_length, prompt_tail,
                     question_tail, readout_budget)
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
    info: dict = field(default_factory=dict)  # status details: lag_s, spooled_s, dropped_s, vad, ...

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
    vad: VadConfig | None = VadConfig()  # None: no detection, the caller's finish() calls end the turns
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
    loop_guard: LoopGuardConfig | None = LoopGuardConfig()  # None: readouts run to their budget
    # benchmarks only: the text readouts decode for the stream's audio between two times
    # (MossAudio.forced_output, docs/benchmarks.md#forced-output)
    forced_output: Callable[[float, float], str] | None = None


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

    def __init__(self, engine: Engine, config: StreamConfig, answer: AnswerMaker | None = None):
        self.engine = engine
        self.manifest = engine.manifest
        self.config = config
        self._answer = answer  # MossAudio's answer loop, for ask_stream
        self.vad = VoiceActivity(config.vad) if config.vad is not None else None
        self.tail_ids = prompt_tail(self.manifest, engine.tokenize, INSTRUCTIONS[config.timestamps])[0].ids
        self._window_room = self._room()
        self.clock = 0  # samples received
        self.history = np.zeros(0, dtype=np.float32)  # recent audio, for pre-roll and rollover
        self.history_start = 0
        self.window: _Window | None = None
        self.last_window: _Window | None = None  # closed, its cache still held: what ask_stream answers from
        self.last_window_end = 0
        self.reclaimed = 0  # windows evaluated anew from their rows after another call took the context
        # (start, end) stream samples and the closing readout's tokens of each closed window
        self.closed_windows: list[tuple[int, int, list[int]]] = []
        self.readout_stats = {"readouts": 0, "draft_tokens": 0, "accepted_tokens": 0, "decoded_tokens": 0,
                              "loops": 0, "readout_s": 0.0}

    # --- audio in ------------------------------------------------------------------------

    def feed(self, samples: np.ndarray, lag_s: float = 0.0) -> list[StreamEvent]:
        samples = np.asarray(samples, dtype=np.float32)
        events: list[StreamEvent] = []
        self._remember(samples)
        if self.window is not None:
            self._reclaim(self.window)
        for vad_event in self.vad.feed(samples) if self.vad is not None else ():
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
        if self.window is None and self.clock > self.last_window_end and (self.vad is None or self.vad.in_speech):
            # no detection, or speech going on after a finish(): the next window starts where the last ended
            self._open(max(self.history_start, self.last_window_end))
            if self.vad is not None:
                events.append(StreamEvent("status", info={"vad": "speech", "at": self.window.start / SAMPLE_RATE}))
        if self.window is not None:  # a window holds all audio up to the clock
            events += self._advance(self._audio(self._window_end(), self.clock), lag_s)
        return events

    def finish(self) -> list[StreamEvent]:
        """End of input, or of a turn the caller marks (a Realtime `commit`): close the open
        window, everything becomes final. Audio fed after it opens a new window."""
        if self.window is None:
            return []
        self._reclaim(self.window)
        return self._close()

    def discard(self) -> None:
        """Drop the open window untranscribed (a Realtime `clear`)."""
        if self.window is not None:
            self.last_window_end = self.clock
            self.window = None

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

    def _room(self) -> int:
        """Positions a window takes after its prompt head, at most: the audio of its longest
        length (a chunk may end past max_window_s), the instruction and a readout."""
        audio = self.manifest.audio
        longest_s = self.config.max_window_s + audio.chunk_frames * audio.hop_length / SAMPLE_RATE
        rows = math.ceil(longest_s * audio.tokens_per_second) + 1
        readout = max(self.config.partial_tokens, self.config.final_tokens)
        return prompt_length(audio_span(self.manifest, rows)) + len(self.tail_ids) + readout

    def _open(self, start: int) -> None:
        sequence = self.engine.start(prompt_head(self.manifest, self.engine.tokenize), room=self._window_room)
        self.window = _Window(start=start, sequence=sequence, kv_end=sequence.n_past)
        self.last_window = None  # the new window took the context

    def _reclaim(self, window: _Window, extra: int = 0) -> None:
        """Give `window` back its cache when another call took the engine's context (a server
        request between two blocks) or `extra` positions after it do not fit: its prompt is
        evaluated anew from the encoder rows it keeps, so nothing is encoded twice."""
        if self.engine.owns(window.sequence) and window.kv_end + extra <= self.engine.n_ctx:
            return
        head = prompt_head(self.manifest, self.engine.tokenize)
        audio = window.kv_end - prompt_length(head)
        window.sequence = self.engine.start(head, room=max(self._window_room, audio + extra))
        if window.rows:
            rows = np.concatenate(window.rows)
            window.sequence.prefill(audio_span(self.manifest, len(rows)), rows)
        window.kv_end = window.sequence.n_past
        self.reclaimed += 1

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
        self.window, self.last_window = None, window
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
        guard = new_guard(self.config.loop_guard, self.engine.token_bytes, self.config.timestamps != "none",
                          window.seconds)
        forced = self.config.forced_output
        script = (self.engine.tokenize(forced(window.start / SAMPLE_RATE, window.start / SAMPLE_RATE + window.seconds))
                  if forced else None)
        result = window.sequence.readout(self.tail_ids, budget, self.manifest.tokens.stop,
                                         window.draft if self.config.use_drafts else (), guard, script)
        stats = self.readout_stats
        stats["readouts"] += 1
        stats["draft_tokens"] += result.draft_tokens
        stats["accepted_tokens"] += result.accepted_tokens
        stats["decoded_tokens"] += result.decoded_tokens
        stats["loops"] += result.looped
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

    # --- questions -----------------------------------------------------------------------

    def ask_stream(self, question: str, max_tokens: int = ANSWER_TOKENS, thinking: bool | None = None,
                   thinking_budget: int | None = None, sampling: Sampling = Sampling()) -> AnswerStream:
        """Answer `question` about the audio of the open window (between utterances: the one
        that just closed) from the rows already in the KV cache: no encoder run, no audio
        prefill, only the question's tokens. The prompt is offline `ask`'s over the same rows
        (docs/realtime.md#questions). An open window holds its complete 4 s chunks only. Consume
        the stream before feeding more audio; the cache is left as it was."""
        window = self.window if self.window is not None else self.last_window
        if window is None or not window.rows:
            raise InputError("no audio to answer from yet: a window holds audio once an utterance has "
                             "ended or 4 s of it have been heard")
        if self._answer is None:
            raise InputError("this session was made without an answer loop: use MossAudio.stream_session")
        tail = question_tail(self.manifest, self.engine.tokenize, question, thinking)  # as offline ask
        started = time.perf_counter()
        self._reclaim(window, prompt_length(tail) + max_tokens)
        window.sequence.truncate(window.kv_end)
        window.sequence.prefill(tail)
        timings = {"encode_s": 0.0, "prefill_s": time.perf_counter() - started}
        events = self._answer(window.sequence, window.seconds, timings, max_tokens, thinking_budget, sampling)
        return AnswerStream(self._answering(window, events))

    def _answering(self, window: _Window, events: Generator[AnswerDelta, None, Answer],
                   ) -> Generator[AnswerDelta, None, Answer]:
        try:
            return (yield from events)
        finally:  # the question and answer leave the cache: the window goes on as before
            if self.engine.owns(window.sequence):
                window.sequence.truncate(window.kv_end)


def stream_events(blocks: Iterable[Block], session: StreamingSession) -> Iterator[StreamEvent]:
    """Run a session over a block source, with lag and lost-input status events. A lost
    device ends the stream cleanly; keep the `session` to flush it yourself on Ctrl-C."""
    config = session.config
    behind_at = None  # session.clock at the last "skipped" status, while behind
    try:
        for block in blocks:
            lag = max(0.0, time.monotonic() - block.captured_at)
            if block.dropped_samples or block.xrun:
                yield StreamEvent("status", info={"dropped_s": block.dropped_samples / SAMPLE_RATE,
                                                  "xrun": block.xrun})
            if lag > config.max_lag_s and (behind_at is None or session.clock - behind_at >= SAMPLE_RATE):
                behind_at = session.clock  # while behind, one status per second of audio
                yield StreamEvent("status", info={"lag_s": round(lag, 2), "spooled_s": round(block.spooled_s, 2),
                                                  "readouts": "skipped"})
            elif lag <= config.max_lag_s and behind_at is not None:
                behind_at = None
                yield StreamEvent("status", info={"lag_s": round(lag, 2), "spooled_s": round(block.spooled_s, 2),
                                                  "readouts": "resumed"})
            yield from session.feed(block.samples, lag_s=lag)
    except DeviceLost as exc:
        yield StreamEvent("status", info={"stopped": str(exc)})
    yield from session.finish()
