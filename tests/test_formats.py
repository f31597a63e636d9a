"""Every output format against hand-written expected files (tests/data/formats/).

The segments cover timed sentences, a wholly untimed one, CJK text with words, times past an
hour, and a missing end with a tab and a newline in the text.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import edge_runtime.formats as formats
import edge_runtime.staging as staging
from edge_runtime.formats import FORMATS, RENDERERS, clock, cue_times, write_transcript
from edge_runtime.timestamps import Segment, Word

EXPECTED = Path(__file__).parent / "data" / "formats"
DURATION = 3730.0
SEGMENTS = [
    Segment(0.0, 2.01, "hello there"),
    Segment(2.01, 4.32, "the weather is nice today"),
    Segment(None, None, "untimed words"),
    Segment(3725.5, 3727.125, "今天天气很好", [Word(3725.5, 3726.0, "今天"), Word(3726.0, 3727.125, "天气很好")]),
    Segment(3728.0, None, "tab\there and\na newline"),
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_rendering_matches_the_expected_file(fmt: str):
    want = (EXPECTED / f"expected.{fmt}").read_text(encoding="utf-8")
    assert RENDERERS[fmt](SEGMENTS, DURATION, "en") == want


def test_json_keeps_untimed_sides_null():
    data = json.loads(RENDERERS["json"](SEGMENTS, DURATION, "en"))
    assert [(s["start"], s["end"]) for s in data["segments"]][2:] == [(None, None), (3725.5, 3727.125),
                                                                     (3728.0, None)]


def test_cues_fill_untimed_sides_from_their_neighbours_only():
    assert cue_times(SEGMENTS, DURATION) == [(0.0, 2.01), (2.01, 4.32), (4.32, 3725.5), (3725.5, 3727.125),
                                             (3728.0, 3730.0)]
    # an untimed end whose next known time lies before its start does not run backwards
    assert cue_times([Segment(5.0, None, "a"), Segment(None, 3.0, "b")], 9.0) == [(5.0, 5.0), (5.0, 5.0)]


@pytest.mark.parametrize("seconds, srt, vtt", [
    (0.0, "00:00:00,000", "00:00:00.000"),
    (2.0004, "00:00:02,000", "00:00:02.000"),
    (59.9996, "00:01:00,000", "00:01:00.000"),
    (3600 * 10 + 61.25, "10:01:01,250", "10:01:01.250"),
])
def test_clock(seconds: float, srt: str, vtt: str):
    assert clock(seconds) == srt and clock(seconds, ".") == vtt


def test_write_transcript_writes_every_format_and_no_temporary_files(tmp_path: Path):
    paths = write_transcript(SEGMENTS, DURATION, "en", list(FORMATS), tmp_path / "out", "clip")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"clip.{f}" for f in FORMATS)
    for path in paths:
        assert path.read_text(encoding="utf-8") == (EXPECTED / f"expected{path.suffix}").read_text(encoding="utf-8")


def test_unknown_format_writes_nothing(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown output format docx"):
        write_transcript(SEGMENTS, DURATION, None, ["txt", "docx"], tmp_path, "clip")
    assert list(tmp_path.iterdir()) == []


def test_a_failing_renderer_writes_no_file_at_all(tmp_path: Path, monkeypatch):
    def broken(*args):
        raise RuntimeError("renderer failed")
    monkeypatch.setitem(formats.RENDERERS, "vtt", broken)
    with pytest.raises(RuntimeError):
        write_transcript(SEGMENTS, DURATION, None, ["txt", "srt", "vtt"], tmp_path, "clip")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch):
    target = tmp_path / "clip.txt"
    target.write_text("old\n")

    def fail(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(staging.os, "replace", fail)
    with pytest.raises(OSError):
        staging.write_atomic(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.txt"]
