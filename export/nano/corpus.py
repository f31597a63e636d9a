"""Spoken-command speech for the nano model, synthesised with espeak-ng.

Sentences come from a small command grammar (digits and a few dozen command words). Each is
spoken once per voice setting (accent + voice variant + speed + pitch) and trimmed to its
audible span, so a clip composed from them knows exactly when each sentence starts and ends:
those are the sentence-timestamp targets. Voice variants and speeds are split into a training
group and a held-out group; evaluation uses only held-out ones.
"""
from __future__ import annotations

import random
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from edge_runtime.features import SAMPLE_RATE
from edge_runtime.speech import Clip, Sentence, Utterance, Voice, espeak_binary, synthesize, to_int16
from edge_runtime.staging import atomic_path

ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
           "en-029", "en-us-nyc")
# Variants that are not a human voice (robots, whispers, effects) are left out altogether.
NOT_HUMAN = {"Demonic", "whisper", "whisperf", "UniRobot", "anikaRobot", "announcer", "fast", "Mr serious",
             "robosoft", "robosoft2", "robosoft3", "robosoft4", "robosoft5", "robosoft6", "robosoft7",
             "robosoft8", "Tweaky", "croak", "klatt5"}
HELD_OUT_VARIANT_COUNT = 12
TRAIN_SPEEDS = (105, 115, 125, 135, 150, 160, 170, 185, 195, 210)  # words per minute
HELD_OUT_SPEEDS = (130, 145, 175, 190)

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ROOMS = ("kitchen", "bedroom", "living room", "bathroom", "garage", "office", "hallway")
DEVICES = ("lights", "heater", "fan", "radio", "oven", "alarm", "music", "television")
OPENABLE = ("door", "window", "garage door", "blinds", "gate")
NAMES = ("mom", "dad", "anna", "peter", "my sister", "the doctor", "the office")
NUMBERS = DIGITS[1:] + ("ten", "twelve", "fifteen", "twenty", "thirty", "forty", "fifty")
DIRECTIONS = ("left", "right", "forward", "back", "up", "down")
SHORT_COMMANDS = ("stop", "pause", "resume", "cancel", "yes", "no", "volume up", "volume down",
                  "next song", "go back", "start recording", "what time is it", "good morning")


def random_sentence(rng: random.Random) -> str:
    """One lowercase command sentence."""
    digits = lambda n: " ".join(rng.choice(DIGITS) for _ in range(n))
    templates = (
        lambda: f"turn on the {rng.choice(ROOMS)} {rng.choice(DEVICES)}",
        lambda: f"turn off the {rng.choice(DEVICES)}",
        lambda: f"set a timer for {rng.choice(NUMBERS)} minutes",
        lambda: f"call {rng.choice(NAMES)}",
        lambda: f"dial {digits(rng.randint(3, 7))}",
        lambda: f"the code is {digits(rng.randint(2, 5))}",
        lambda: f"{rng.choice(('open', 'close'))} the {rng.choice(OPENABLE)}",
        lambda: f"set the temperature to {rng.choice(NUMBERS)} degrees",
        lambda: f"move {rng.choice(DIRECTIONS)} {rng.choice(NUMBERS)} steps",
        lambda: f"wake me up at {rng.choice(DIGITS[1:])} {rng.choice(('thirty', 'fifteen', 'forty'))}",
        lambda: f"go to page {rng.choice(NUMBERS)}",
        lambda: rng.choice(SHORT_COMMANDS),
        lambda: digits(rng.randint(1, 6)),
    )
    return rng.choice(templates)()


def espeak_variants() -> list[str]:
    """Human voice variants this espeak-ng installation offers, sorted."""
    listing = subprocess.run([espeak_binary(), "--voices=variant"], check=True, capture_output=True,
                             text=True).stdout.splitlines()[1:]
    names = {line.split(None, 4)[4].split()[0].removeprefix("!v/") for line in listing if line.strip()}
    files = {p.name for p in _variant_dir().iterdir()} if _variant_dir() else names
    return sorted(n for n in files if n not in NOT_HUMAN)


def _variant_dir() -> Path | None:
    for root in (Path("/usr/lib/x86_64-linux-gnu/espeak-ng-data"), Path("/usr/lib/aarch64-linux-gnu/espeak-ng-data"),
                 Path("/usr/share/espeak-ng-data")):
        if (root / "voices" / "!v").is_dir():
            return root / "voices" / "!v"
    return None


@dataclass(frozen=True)
class VoiceSplit:
    train_variants: tuple[str, ...]
    held_out_variants: tuple[str, ...]


def split_variants(seed: int = 0) -> VoiceSplit:
    variants = espeak_variants()
    held = set(random.Random(seed).sample(variants, HELD_OUT_VARIANT_COUNT))
    return VoiceSplit(tuple(v for v in variants if v not in held), tuple(v for v in variants if v in held))


def random_voice(rng: random.Random, variants: Sequence[str], speeds: Sequence[int]) -> Voice:
    return Voice(rng.choice(ACCENTS), rng.choice(variants), rng.choice(speeds), rng.randint(15, 85))


def build_bank(n_voices: int, sentences_per_voice: int, variants: Sequence[str], speeds: Sequence[int],
               seed: int, workers: int = 2) -> list[list[Utterance]]:
    """`n_voices` random voice settings, each speaking `sentences_per_voice` random sentences."""
    rng = random.Random(seed)
    jobs = []
    for _ in range(n_voices):
        voice = random_voice(rng, variants, speeds)
        jobs.append([(random_sentence(rng), voice) for _ in range(sentences_per_voice)])
    flat = [job for group in jobs for job in group]
    with ThreadPoolExecutor(workers) as pool:
        audio = list(pool.map(lambda job: synthesize(*job), flat))
    it = iter(audio)
    return [[Utterance(text, voice, to_int16(next(it))) for text, voice in group] for group in jobs]


def save_bank(bank: list[list[Utterance]], path: Path) -> None:
    texts, voices, lengths, owners = [], [], [], []
    for i, group in enumerate(bank):
        for u in group:
            texts.append(u.text)
            voices.append(f"{u.voice.accent}|{u.voice.variant}|{u.voice.speed}|{u.voice.pitch}")
            lengths.append(len(u.audio))
            owners.append(i)
    audio = np.concatenate([u.audio for group in bank for u in group])
    with atomic_path(path) as partial, partial.open("wb") as f:
        np.savez(f, audio=audio, lengths=np.array(lengths), owners=np.array(owners),
                 texts=np.array(texts), voices=np.array(voices))


def load_bank(path: Path) -> list[list[Utterance]]:
    with np.load(path) as data:  # each data[key] reads the array from the archive again
        audio, lengths, owners = data["audio"], data["lengths"], data["owners"]
        texts, voices = data["texts"], data["voices"]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    bank: list[list[Utterance]] = [[] for _ in range(int(owners.max()) + 1)]
    for i, (text, voice, owner) in enumerate(zip(texts, voices, owners)):
        accent, variant, speed, pitch = str(voice).split("|")
        bank[int(owner)].append(Utterance(str(text), Voice(accent, variant, int(speed), int(pitch)),
                                          audio[offsets[i]:offsets[i + 1]]))
    return bank


def compose_clip(utterances: Sequence[Utterance], rng: np.random.Generator, max_seconds: float,
                 augment: float) -> Clip:
    """Utterances of one voice placed with random leading silence and gaps, up to
    `max_seconds`, then room echo, background noise and gain with probabilities scaled by
    `augment` (0: clean, 1: full)."""
    target = rng.uniform(1.0, max_seconds)
    order = rng.permutation(len(utterances))
    pieces: list[np.ndarray] = []
    sentences: list[Sentence] = []
    cursor = int(rng.uniform(0.0, 1.5) * SAMPLE_RATE)
    pieces.append(np.zeros(cursor, dtype=np.float32))
    for index in order:
        u = utterances[index]
        length = len(u.audio)
        tail = int(rng.uniform(0.1, 1.0) * SAMPLE_RATE)
        if sentences and (cursor + length + tail) / SAMPLE_RATE > target:
            break  # (the first sentence always goes in: one utterance may outlast a short limit)
        pieces.append(u.audio.astype(np.float32) / 32768.0)
        sentences.append(Sentence(cursor / SAMPLE_RATE, (cursor + length) / SAMPLE_RATE, u.text))
        cursor += length
        gap = int(rng.uniform(0.15, 1.2) * SAMPLE_RATE)
        pieces.append(np.zeros(gap, dtype=np.float32))
        cursor += gap
    audio = np.concatenate(pieces)
    end = int((sentences[-1].end + rng.uniform(0.1, 1.0)) * SAMPLE_RATE)
    audio = np.pad(audio, (0, max(0, end - len(audio))))[:end]
    if augment > 0:
        audio = _augment(audio, rng, augment)
    return Clip(audio.astype(np.float32), sentences, utterances[0].voice)


def _augment(audio: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Room echo (30% of clips at full strength), background noise (70%) and gain."""
    if rng.random() < 0.3 * strength:  # a decaying noise tail after the direct path
        n = int(rng.uniform(0.1, 0.5) * SAMPLE_RATE)  # RT60
        tail = rng.standard_normal(n) * np.exp(-6.9 * np.arange(n) / n)
        tail *= np.sqrt(rng.uniform(0.05, 0.5) / np.sum(tail[1:] ** 2))  # tail energy: 5-50% of the direct sound
        tail[0] = 1.0
        size = _fast_size(len(audio) + n)
        audio = np.fft.irfft(np.fft.rfft(audio, size) * np.fft.rfft(tail, size), size)[: len(audio)]
    speech_rms = np.sqrt(np.mean(audio[np.abs(audio) > 1e-4] ** 2)) if np.any(np.abs(audio) > 1e-4) else 0.1
    if rng.random() < 0.7 * strength:
        noise = colored_noise(len(audio), rng.choice(("white", "pink", "brown")), rng)
        snr_db = rng.uniform(5.0, 40.0)
        audio = audio + noise * speech_rms / 10 ** (snr_db / 20)
    audio = audio * 10 ** (rng.uniform(-25.0, 0.0) / 20)
    peak = np.abs(audio).max()
    return audio / peak * 0.99 if peak > 0.99 else audio


def colored_noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
    if color == "white":
        return rng.standard_normal(n)
    size = _fast_size(n)
    spectrum = np.fft.rfft(rng.standard_normal(size))
    freqs = np.maximum(np.fft.rfftfreq(size), 1.0 / size)
    spectrum /= np.sqrt(freqs) if color == "pink" else freqs
    noise = np.fft.irfft(spectrum, size)[:n]
    return noise / (noise.std() + 1e-12)


def _fast_size(n: int) -> int:
    """A power of two >= n: numpy's FFT is slow on lengths with large prime factors."""
    return 1 << max(0, n - 1).bit_length()


def held_out_clips(count: int, seed: int, augment: bool = False, max_seconds: float = 20.0) -> list[Clip]:
    """The evaluation set: held-out voice variants and speeds, fixed by `seed`; `augment`
    adds training's noise, echo and gain."""
    return evaluation_clips(count, seed, split_variants().held_out_variants, HELD_OUT_SPEEDS, augment, max_seconds)


def evaluation_clips(count: int, seed: int, variants: Sequence[str], speeds: Sequence[int], augment: bool = False,
                     max_seconds: float = 20.0) -> list[Clip]:
    """`count` clips fixed by `seed`, each of one random voice setting (accent, one of `variants`,
    one of `speeds`, pitch) saying random sentences, synthesised afresh."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    clips = []
    for _ in range(count):
        voice = random_voice(rng, variants, speeds)
        texts = [random_sentence(rng) for _ in range(6)]
        utterances = [Utterance(t, voice, to_int16(synthesize(t, voice))) for t in texts]
        clips.append(compose_clip(utterances, nrng, max_seconds, augment=1.0 if augment else 0.0))
    return clips


def words(text: str) -> list[str]:
    """Lowercase words without punctuation: what word error rate compares."""
    cleaned = "".join(c.lower() if c.isalnum() or c == "'" else " " for c in text)
    return cleaned.split()


def word_errors(reference: Iterable[str], hypothesis: Iterable[str]) -> int:
    """Levenshtein distance over words (substitutions + deletions + insertions)."""
    ref, hyp = list(reference), list(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[-1]
