"""`moss-edge demo`: the embedded nano model on speech it has never heard.

Speaks a few commands with espeak-ng in a voice and at a speed held out of the nano model's
training, runs the shipped bundle on the clip with sentence timestamps, and prints each
sentence with its predicted and its true times. `--mic` then listens to the default
microphone. The nano model knows only its small command vocabulary (see its model card).
"""
from __future__ import annotations

import os
from pathlib import Path

import soundfile as sf

from edge_runtime.bundle import EMBEDDED_BUNDLES, load_bundle
from edge_runtime.transcribe import MossAudio

from .nano import corpus

DEMO_SENTENCES = ("turn on the kitchen lights", "set a timer for ten minutes", "call my sister",
                  "dial four two seven one", "open the garage door")
GAP_S = 0.8


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "moss-audio-edge" / "demo"


def demo_clip() -> corpus.Clip:
    """The demo sentences, one after another, in a held-out voice at a held-out speed."""
    voice = corpus.Voice("en-us", corpus.split_variants().held_out_variants[0], corpus.HELD_OUT_SPEEDS[1], 50)
    utterances = [corpus.Utterance(text, voice, corpus.to_int16(corpus.synthesize(text, voice)))
                  for text in DEMO_SENTENCES]
    starts, t = [], 0.4
    for u in utterances:
        starts.append(t)
        t += len(u.audio) / corpus.SAMPLE_RATE + GAP_S
    return corpus.place(utterances, starts)


def run_demo(cache_dir: Path | None = None, threads: int | None = None) -> int:
    cache_dir = cache_dir or default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(EMBEDDED_BUNDLES["nano"])
    card = bundle.manifest.model_card
    print(f"1. embedded nano MOSS-Audio: {bundle.directory}")
    print(f"   {card.get('summary', '')}")
    clip = demo_clip()
    wav = cache_dir / "speech.wav"
    sf.write(wav, clip.audio, corpus.SAMPLE_RATE)
    v = clip.voice
    print(f"2. {len(clip.audio) / corpus.SAMPLE_RATE:.1f} s of espeak-ng speech in {wav}")
    print(f"   voice {v.accent}+{v.variant} at {v.speed} words/min: neither was used in training")
    print("3. transcript with sentence timestamps (predicted | true):")
    model = MossAudio(bundle, threads=threads)
    segments = list(model.transcribe(wav, timestamps="sentence")[0])
    for segment in segments:
        times = (f"[{segment.start:6.2f} -> {segment.end:6.2f}]" if segment.timed else "[  untimed  ]")
        truth = _overlapping(clip, segment)
        true_times = f"| true [{truth.start:6.2f} -> {truth.end:6.2f}] {truth.text}" if truth else ""
        print(f"   {times} {segment.text:32s} {true_times}")
    print("   live from a microphone: moss-edge listen nano")
    return 0


def _overlapping(clip: corpus.Clip, segment) -> corpus.Sentence | None:
    if not segment.timed:
        return None
    best = max(clip.sentences, key=lambda s: min(s.end, segment.end) - max(s.start, segment.start))
    return best if min(best.end, segment.end) > max(best.start, segment.start) else None
