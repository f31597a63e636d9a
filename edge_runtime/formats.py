"""Transcripts as txt / json / srt / vtt / tsv, written atomically (no partial files).

JSON and TSV keep an untimed side as null / an empty field. SRT and VTT need a time on every
cue, so a side the model left untimed is shown over the gap its neighbours leave: from the
previous cue's end, to the next known time (or the end of the audio).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from .errors import InputError
from .staging import write_atomic
from .timestamps import Segment, join_text

FORMATS = ("txt", "json", "srt", "vtt", "tsv")


def transcript_text(segments: list[Segment]) -> str:
    return join_text([s.text for s in segments])


def clock(seconds: float, decimal: str = ",") -> str:
    """HH:MM:SS,mmm (SRT) or HH:MM:SS.mmm (VTT)."""
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{ms:03d}"


def cue_times(segments: list[Segment], duration: float) -> list[tuple[float, float]]:
    """A (start, end) for every segment, untimed sides bounded by their neighbours (see above)."""
    times: list[tuple[float, float]] = []
    previous_end = 0.0
    for i, segment in enumerate(segments):
        start = previous_end if segment.start is None else segment.start
        later = (t for s in segments[i + 1:] for t in (s.start, s.end) if t is not None)
        end = segment.end if segment.end is not None else next(later, duration)
        times.append((start, max(start, end)))
        previous_end = max(start, end)
    return times


def _one_line(text: str) -> str:
    return " ".join(text.split())


def to_txt(segments: list[Segment], duration: float, language: str | None = None) -> str:
    return "".join(f"{_one_line(s.text)}\n" for s in segments)


def to_json(segments: list[Segment], duration: float, language: str | None = None,
            finish_reasons: list[str] | None = None) -> str:
    """`finish_reasons`: why each window's decoding ended (TranscriptionInfo.finish_reasons)."""
    data = {
        "text": transcript_text(segments), "language": language, "duration": round(duration, 3),
        "segments": [{"id": i, "start": s.start, "end": s.end, "text": s.text,
                      "words": [{"start": w.start, "end": w.end, "text": w.text} for w in s.words]}
                     for i, s in enumerate(segments)],
    }
    if finish_reasons is not None:
        data["finish_reasons"] = finish_reasons
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def to_srt(segments: list[Segment], duration: float, language: str | None = None) -> str:
    return "".join(f"{i}\n{clock(start)} --> {clock(end)}\n{_one_line(s.text)}\n\n"
                   for i, (s, (start, end)) in enumerate(zip(segments, cue_times(segments, duration)), 1))


def to_vtt(segments: list[Segment], duration: float, language: str | None = None) -> str:
    cues = "".join(f"{clock(start, '.')} --> {clock(end, '.')}\n{_one_line(s.text)}\n\n"
                   for s, (start, end) in zip(segments, cue_times(segments, duration)))
    return f"WEBVTT\n\n{cues}"


def to_tsv(segments: list[Segment], duration: float, language: str | None = None) -> str:
    """whisper's layout: integer milliseconds; an untimed side is an empty field."""
    def ms(t: float | None) -> str:
        return "" if t is None else str(round(t * 1000))
    return "start\tend\ttext\n" + "".join(f"{ms(s.start)}\t{ms(s.end)}\t{_one_line(s.text)}\n" for s in segments)


RENDERERS: dict[str, Callable[[list[Segment], float, str | None], str]] = {
    "txt": to_txt, "json": to_json, "srt": to_srt, "vtt": to_vtt, "tsv": to_tsv}


def write_transcript(segments: list[Segment], duration: float, language: str | None, formats: list[str],
                     output_dir: Path, stem: str, finish_reasons: list[str] | None = None) -> list[Path]:
    """Render every format first (a failure writes nothing), then write each atomically; the
    JSON document also says why each window ended (`finish_reasons`)."""
    unknown = [f for f in formats if f not in RENDERERS]
    if unknown:
        raise InputError(f"unknown output format {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    rendered = {f: to_json(segments, duration, language, finish_reasons) if f == "json"
                else RENDERERS[f](segments, duration, language) for f in formats}
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt, text in rendered.items():
        paths.append(output_dir / f"{stem}.{fmt}")
        write_atomic(paths[-1], text)
    return paths
