"""A stress set for the nano model: speech drawn outside what training and the held-out set use.

The held-out set of benchmarks/nano_quality.py differs from training only in voice variant and
speed, and speaks training's own grammar, so it says little about speech a user may produce.
Every clip here differs from training along each of these dimensions (why each exists):

- **Grammar** (digits are what users dictate and what nano gets wrong): free digit strings of
  2-7 digits, most with a deliberate run of a repeated digit ("nine nine"), and digit strings
  inside short phrases that training's grammar (`corpus.random_sentence`) never forms. Only
  training's words are used, so an error is a failure to hear, not an unknown word.
- **Speed** (people dictate slowly and read out fast): 80-90 wpm, the same with pauses between
  words, and 240-300 wpm; training speaks at 105-210, the held-out set at 130-190. espeak-ng
  speaks any request under 80 wpm at 80, so the pauses (its word gap) make the slowest speech.
- **Voice** (new speakers): every voice variant training never used: `split_variants`' held-out
  side and, in a quarter of the clips, the effect variants (robots, whispers) the corpus leaves
  out altogether. Accents are all of espeak-ng's installed English voices; its English MBROLA
  voices are left out, as without the MBROLA data they do not speak.
- **Pitch** (very low and very high voices): espeak-ng -p 0-14 and 86-99; training draws 15-85.
- **Level** (a far microphone): half the clips with their speech at -30 dBFS over a constant
  noise floor 20 dB below it. Training's random gain and noise already reach that level and SNR;
  the floor under every clip's silences as well as its speech is the new part.
- **Sentences** (timestamps are placed between sentences): 2-4 per clip.

Each clip carries its `Labels`, so results can be broken down by these dimensions.
"""
from __future__ import annotations

import dataclasses
import random
import subprocess
from dataclasses import dataclass

import numpy as np

from edge_runtime.features import SAMPLE_RATE
from edge_runtime.speech import Clip, Utterance, Voice, espeak_binary, place, synthesize, to_int16

from .corpus import DEVICES, DIGITS, NAMES, NOT_HUMAN, ROOMS, colored_noise, split_variants

STRESS_SEED = 20261207  # not training's (0) nor the held-out sets' (20261126, 20261127)
MAX_SECONDS = 20.0  # training's longest clip: sentences past it are dropped (two always stay)

# bucket -> (lowest wpm, highest wpm, word gap range in espeak-ng's 10 ms units, or None)
RATES: dict[str, tuple[int, int, tuple[int, int] | None]] = {
    "slow 80-90 wpm": (80, 90, None),
    "slow 80-90 wpm + 150-300 ms pauses": (80, 90, (15, 30)),
    "fast 240-300 wpm": (240, 300, None),
}
PITCHES: dict[str, tuple[int, int]] = {"low 0-14": (0, 14), "high 86-99": (86, 99)}
AS_SYNTHESISED = "as synthesised"
QUIET = "-30 dBFS, noise floor at 20 dB SNR"
QUIET_DBFS = -30.0
NOISE_FLOOR_SNR_DB = 20.0
HELD_OUT_VOICE = "held-out variant"
EFFECT_VOICE = "effect variant"
EFFECT_SHARE = 0.25  # robots and whispers are a test of their own: a quarter, so the rest dominates
REPEAT_SHARE = 0.7  # digit strings with a deliberate run of one digit
PHRASE_SHARE = 0.4  # sentences with a digit string inside a phrase; the rest are bare digit strings
# Phrases of training's words in orders its grammar never forms (# stands for a digit string).
PHRASES = (
    "call {name} at #",
    "the {room} code is #",
    "set the {device} to #",
    "# is the code",
    "{reply} #",
)
REPLIES = ("stop", "cancel", "yes", "no")


@dataclass(frozen=True)
class PausedVoice(Voice):
    """A voice with a pause between words (espeak-ng -g): slower than its 80 wpm floor allows."""
    word_gap: int = 0  # espeak-ng's units of 10 ms

    def args(self) -> list[str]:
        return [*super().args(), "-g", str(self.word_gap)]


@dataclass(frozen=True)
class Labels:
    """What a clip stresses, one value per dimension, for breakdowns."""
    accent: str
    variant: str
    voice_kind: str
    rate: str
    pitch: str
    level: str


@dataclass(frozen=True)
class StressSpec:
    """A clip before synthesis: drawing these is fast, so tests can check thousands."""
    voice: Voice
    texts: tuple[str, ...]
    labels: Labels


@dataclass
class StressClip:
    clip: Clip
    labels: Labels


def english_voices() -> list[str]:
    """espeak-ng's English language voices, without the MBROLA ones (they need separate data)."""
    listing = subprocess.run([espeak_binary(), "--voices=en"], check=True, capture_output=True,
                             text=True).stdout.splitlines()[1:]
    rows = [line.split() for line in listing if line.strip()]
    return sorted({row[1] for row in rows if row[1] != "variant" and not row[4].startswith("mb/")})


def digit_string(rng: random.Random) -> str:
    """2-7 spoken digits; most hold a run of two or three of one digit."""
    digits = [rng.choice(DIGITS) for _ in range(rng.randint(2, 7))]
    if rng.random() < REPEAT_SHARE:
        at = rng.randrange(len(digits) - 1)
        run = min(rng.choice((2, 3)), len(digits) - at)
        digits[at:at + run] = [digits[at]] * run
    return " ".join(digits)


def stress_sentence(rng: random.Random) -> str:
    if rng.random() >= PHRASE_SHARE:
        return digit_string(rng)
    phrase = rng.choice(PHRASES).format(name=rng.choice(NAMES), room=rng.choice(ROOMS),
                                        device=rng.choice(DEVICES), reply=rng.choice(REPLIES))
    return phrase.replace("#", digit_string(rng))


def draw_specs(count: int, seed: int = STRESS_SEED) -> list[StressSpec]:
    """`count` clip specs fixed by `seed`: a voice setting, 2-4 sentences and the labels."""
    rng = random.Random(seed)
    held_out, effects, accents = split_variants().held_out_variants, sorted(NOT_HUMAN), english_voices()
    specs = []
    for _ in range(count):
        effect = rng.random() < EFFECT_SHARE
        variant = rng.choice(effects if effect else held_out)
        accent = rng.choice(accents)
        rate = rng.choice(sorted(RATES))
        low, high, gap = RATES[rate]
        pitch = rng.choice(sorted(PITCHES))
        voice = Voice(accent, variant, rng.randint(low, high), rng.randint(*PITCHES[pitch]))
        if gap is not None:
            voice = PausedVoice(*dataclasses.astuple(voice), word_gap=rng.randint(*gap))
        level = rng.choice((AS_SYNTHESISED, QUIET))
        texts = tuple(stress_sentence(rng) for _ in range(rng.randint(2, 4)))
        labels = Labels(accent, variant, EFFECT_VOICE if effect else HELD_OUT_VOICE, rate, pitch, level)
        specs.append(StressSpec(voice, texts, labels))
    return specs


def render(spec: StressSpec, rng: np.random.Generator) -> StressClip:
    """The spec spoken, its sentences placed with random silences, quieted if its level says so."""
    starts: list[float] = []
    utterances: list[Utterance] = []
    cursor = rng.uniform(0.2, 1.0)
    for text in spec.texts:
        utterance = Utterance(text, spec.voice, to_int16(synthesize(text, spec.voice)))
        seconds = len(utterance.audio) / SAMPLE_RATE
        if len(starts) >= 2 and cursor + seconds > MAX_SECONDS:
            break
        starts.append(cursor)
        utterances.append(utterance)
        cursor += seconds + rng.uniform(0.3, 1.0)
    # corpus.compose_clip draws a random target length and may keep a single sentence; the
    # stress set needs several, so sentences are placed directly
    clip = place(utterances, starts, tail_s=rng.uniform(0.2, 0.8))
    if spec.labels.level == QUIET:
        clip = dataclasses.replace(clip, audio=quiet_with_noise_floor(clip, rng))
    return StressClip(clip, spec.labels)


def quiet_with_noise_floor(clip: Clip, rng: np.random.Generator) -> np.ndarray:
    """The clip with its speech at QUIET_DBFS (RMS over the sentences) and a white or pink
    noise floor NOISE_FLOOR_SNR_DB below it over the whole clip."""
    speech = np.concatenate([clip.audio[round(s.start * SAMPLE_RATE):round(s.end * SAMPLE_RATE)]
                             for s in clip.sentences])
    audio = clip.audio * (10 ** (QUIET_DBFS / 20) / np.sqrt(np.mean(speech.astype(np.float64) ** 2)))
    noise = colored_noise(len(audio), rng.choice(("white", "pink")), rng)  # unit RMS
    return (audio + noise * 10 ** ((QUIET_DBFS - NOISE_FLOOR_SNR_DB) / 20)).astype(np.float32)


def stress_clips(count: int, seed: int = STRESS_SEED) -> list[StressClip]:
    """The stress set: `count` clips fixed by `seed`, synthesised afresh."""
    rng = np.random.default_rng(seed)
    return [render(spec, rng) for spec in draw_specs(count, seed)]
