"""`moss-edge demo`: the embedded nano model on speech it has never heard.

Speaks a few commands with espeak-ng in a voice and at a speed held out of the nano model's
training (its model card lists them), runs the shipped bundle on the clip with sentence
timestamps, and prints each sentence with its predicted and its true times. `--mic` then
listens to the default microphone. Needs only the base install and the espeak-ng program;
the nano model knows only its small command vocabulary (see its model card).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..bundle import EMBEDDED_BUNDLES, Bundle, load_bundle
from ..features import SAMPLE_RATE
from ..speech import Clip, Sentence, Utterance, Voice, place, synthesize, to_int16
from ..timestamps import Segment
from . import exit_codes, live

DEMO_SENTENCES = ("turn on the kitchen lights", "set a timer for ten minutes", "call my sister",
                  "dial four two seven one", "open the garage door")
LEAD_S = 0.4  # silence before the first sentence
GAP_S = 0.8  # silence between sentences


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "moss-audio-edge" / "demo"


def demo_clip(bundle: Bundle) -> Clip:
    """The demo sentences, one after another, in a voice and at a speed the model's training held out."""
    held_out = bundle.manifest.model_card["held_out"]
    voice = Voice("en-us", held_out["voice_variants"][0], held_out["speeds_wpm"][1], 50)
    utterances = [Utterance(text, voice, to_int16(synthesize(text, voice))) for text in DEMO_SENTENCES]
    starts, t = [], LEAD_S
    for u in utterances:
        starts.append(t)
        t += len(u.audio) / SAMPLE_RATE + GAP_S
    return place(utterances, starts)


def run_demo(cache_dir: Path | None = None, threads: int | None = None) -> int:
    import soundfile as sf

    from ..transcribe import MossAudio

    cache_dir = cache_dir or default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(EMBEDDED_BUNDLES["nano"])
    print(f"1. embedded nano MOSS-Audio: {bundle.directory}")
    print(f"   {bundle.manifest.model_card.get('summary', '')}")
    clip = demo_clip(bundle)
    wav = cache_dir / "speech.wav"
    sf.write(wav, clip.audio, SAMPLE_RATE)
    v = clip.voice
    print(f"2. {len(clip.audio) / SAMPLE_RATE:.1f} s of espeak-ng speech in {wav}")
    print(f"   voice {v.accent}+{v.variant} at {v.speed} words/min: neither was used in training")
    print("3. transcript with sentence timestamps (predicted | true):")
    model = MossAudio(bundle, threads=threads)
    for segment in model.transcribe(wav, timestamps="sentence")[0]:
        times = f"[{segment.start:6.2f} -> {segment.end:6.2f}]" if segment.timed else "[  untimed  ]"
        truth = _overlapping(clip, segment)
        true_times = f"| true [{truth.start:6.2f} -> {truth.end:6.2f}] {truth.text}" if truth else ""
        print(f"   {times} {segment.text:32s} {true_times}")
    print("   live from a microphone: moss-edge listen nano")
    return exit_codes.OK


def _overlapping(clip: Clip, segment: Segment) -> Sentence | None:
    if not segment.timed:
        return None
    best = max(clip.sentences, key=lambda s: min(s.end, segment.end) - max(s.start, segment.start))
    return best if min(best.end, segment.end) > max(best.start, segment.start) else None


def _demo(args: argparse.Namespace) -> int:
    status = run_demo(cache_dir=args.cache_dir, threads=args.threads)
    if status or args.mic is None:
        return status
    from ..capture import default_microphone

    name = default_microphone()
    if name is None:
        print("4. no microphone found (PortAudio lists no input device); skipping the live part")
        return exit_codes.OK
    print(f"4. live from {name!r} for {args.mic:.0f} s (Ctrl-C stops); say a command or some digits")
    parser = argparse.ArgumentParser(prog="moss-edge")
    live.add_parsers(parser.add_subparsers())
    threads = ["--threads", str(args.threads)] if args.threads else []
    return live.listen(parser.parse_args(["listen", "nano", "--max-seconds", str(args.mic), *threads]))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="the embedded nano model on generated speech: a timestamped transcript")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--mic", type=float, nargs="?", const=30.0, default=None, metavar="SECONDS",
                        help="then listen to the default microphone, when there is one (default 30 s)")
    parser.set_defaults(handler=_demo, extra="mic")
