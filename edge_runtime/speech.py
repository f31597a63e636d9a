"""Speech synthesised with espeak-ng, and clips placed from it whose sentence times are known.

espeak-ng is a program (Debian: `apt-get install espeak-ng`), not a Python dependency, so
`moss-edge demo` runs on a plain install. This is the one wrapper around it: the demo, the
nano model's training corpus, the quantize fidelity report, tests and benchmarks all speak
through it.
"""
from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

from .audio import resample
from .features import SAMPLE_RATE

# A paragraph of spoken commands: the speech that tests, benchmarks and fidelity reports use.
SAMPLE_TEXT = (
    "Turn on the kitchen lights. Set a timer for seven minutes. What is the weather like "
    "tomorrow morning? Play some quiet music in the living room. Call my sister at nine "
    "thirty. Remind me to water the plants on Sunday. Open the garage door and switch off "
    "the heater. Read me the news headlines, then stop."
)
FRAME = SAMPLE_RATE // 100  # 10 ms, the step of trim_silence


def espeak_binary() -> str:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    return binary


def _espeak(text: str, options: Sequence[str]) -> bytes:
    """What espeak-ng writes to stdout when speaking `text` with `options`."""
    return subprocess.run([espeak_binary(), *options, text], check=True, capture_output=True).stdout


def speak(text: str, out_wav: Path, voice: str = "en-us", words_per_minute: int = 150) -> Path:
    """Write `text` spoken by espeak-ng to a WAV as espeak-ng makes it (22050 Hz mono, 16-bit)."""
    _espeak(text, ["-v", voice, "-s", str(words_per_minute), "-w", str(out_wav)])
    return out_wav


@dataclass(frozen=True)
class Voice:
    accent: str  # an espeak-ng language voice, e.g. en-us
    variant: str  # an espeak-ng voice variant, e.g. m3
    speed: int  # words per minute
    pitch: int  # 0..99

    def args(self) -> list[str]:
        return ["-v", f"{self.accent}+{self.variant}", "-s", str(self.speed), "-p", str(self.pitch)]


def trim_silence(audio: np.ndarray, floor_db: float = -40.0) -> np.ndarray:
    """The audible span: 10 ms frames within `floor_db` of the loudest frame."""
    frames = len(audio) // FRAME
    if frames == 0:
        return audio
    rms = np.sqrt((audio[: frames * FRAME].reshape(frames, FRAME).astype(np.float64) ** 2).mean(axis=1) + 1e-20)
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (floor_db / 20))
    return audio[loud[0] * FRAME: (loud[-1] + 1) * FRAME]


def synthesize(text: str, voice: Voice) -> np.ndarray:
    """`text` spoken by espeak-ng, 16 kHz float32, trimmed to its audible span."""
    audio, rate = sf.read(io.BytesIO(_espeak(text, [*voice.args(), "--stdout"])), dtype="float32")
    return trim_silence(resample(audio, rate, SAMPLE_RATE).astype(np.float32))


def to_int16(audio: np.ndarray) -> np.ndarray:
    return np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)


@dataclass
class Utterance:
    text: str
    voice: Voice
    audio: np.ndarray  # int16, 16 kHz, trimmed


@dataclass
class Sentence:
    start: float
    end: float
    text: str


@dataclass
class Clip:
    audio: np.ndarray  # float32, 16 kHz
    sentences: list[Sentence]
    voice: Voice

    @property
    def transcript(self) -> str:
        return " ".join(f"{s.text[0].upper()}{s.text[1:]}." for s in self.sentences)

    @property
    def timestamped(self) -> str:
        return "".join(f"[{s.start:.2f}]{s.text}[{s.end:.2f}]" for s in self.sentences)


def place(utterances: Sequence[Utterance], starts: Sequence[float], tail_s: float = 0.5) -> Clip:
    """Utterances at fixed start times (seconds), silence elsewhere."""
    ends = [start + len(u.audio) / SAMPLE_RATE for start, u in zip(starts, utterances)]
    audio = np.zeros(int((ends[-1] + tail_s) * SAMPLE_RATE), dtype=np.float32)
    sentences = []
    for start, u in zip(starts, utterances):
        first = int(round(start * SAMPLE_RATE))
        audio[first:first + len(u.audio)] = u.audio.astype(np.float32) / 32768.0
        sentences.append(Sentence(first / SAMPLE_RATE, (first + len(u.audio)) / SAMPLE_RATE, u.text))
    return Clip(audio, sentences, utterances[0].voice)
