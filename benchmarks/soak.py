"""Soak: a long recording of spoken commands with pauses through `moss-edge listen --input FILE`,
run as a user runs it (a subprocess, events read as JSON lines, its memory sampled from /proc).

Two runs on the same file, with the embedded nano bundle:
- **fast**: the file fed as fast as the model takes it (a pull source: never behind);
- **slow consumer**: the file played as a live source (`--pace`) several times faster than
  the model can transcribe, so the backlog grows to most of the file and is spooled to disk
  (docs/streaming.md#falling-behind). Nothing may be dropped.

For each: resident memory over the run (growth from the first tenth to the last tenth of the
samples), every utterance finalised exactly once (its span covered by finals, no two finals
overlapping), no event out of order (finals, voice-activity times and partials only move
forward), the audio heard equal to the file's, word errors against the spoken text, and the
largest lag and spool the status events reported.

    python benchmarks/soak.py --minutes 60

Writes benchmarks/results/soak.{json,md}: the JSON's top level is a flat dict of named figures
and run metadata (benchmarks/reliability.py reads it). Needs espeak-ng.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import soundfile

from edge_runtime import speech
from edge_runtime.features import SAMPLE_RATE
from moss_audio_edge.export.nano import corpus
from results_file import RESULTS, provenance, stamp, write_results  # benchmarks/ is the script's directory

MOSS_EDGE = Path(sys.executable).with_name("moss-edge")
PAUSES_S = (1.2, 4.0)  # silence between utterances: longer than the VAD's 0.6 s closing gap plus padding
SLACK_S = 0.35  # a final may start or end this far outside its utterance (the VAD's 0.3 s padding)


def speech_with_pauses(seconds: float, seed: int = 0, distinct: int = 40) -> speech.Clip:
    """`seconds` of nano-vocabulary commands in held-out espeak-ng voices, separated by random
    pauses; `distinct` utterances are synthesised and then reused in random order."""
    rng = random.Random(seed)
    variants, speeds = corpus.split_variants().held_out_variants, corpus.HELD_OUT_SPEEDS
    bank = []
    for _ in range(distinct):
        voice = corpus.random_voice(rng, variants, speeds)
        text = corpus.random_sentence(rng)
        bank.append(speech.Utterance(text, voice, speech.to_int16(speech.synthesize(text, voice))))
    chosen, starts, position = [], [], rng.uniform(*PAUSES_S)
    while True:
        utterance = rng.choice(bank)
        end = position + len(utterance.audio) / SAMPLE_RATE
        if end + PAUSES_S[0] > seconds:
            break
        chosen.append(utterance)
        starts.append(position)
        position = end + rng.uniform(*PAUSES_S)
    return speech.place(chosen, starts, tail_s=PAUSES_S[0])


def rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    # None once the process has exited (a zombie's status has no VmRSS line)
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), None)


def listen(wav: Path, extra: list[str], threads: int) -> tuple[list[dict], list[float], float]:
    """(events, RSS in MB every 0.5 s from the first final event on, wall seconds) of one run."""
    command = [str(MOSS_EDGE), "listen", "nano", "--input", str(wav), "--format", "jsonl",
               "--threads", str(threads), *extra]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples: list[float] = []
    warm = threading.Event()  # the model is loaded and has transcribed an utterance

    def sample() -> None:
        while process.poll() is None:
            if warm.is_set() and (rss := rss_mb(process.pid)) is not None:
                samples.append(rss)
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    events = []
    for line in process.stdout:
        events.append(json.loads(line))
        if events[-1]["type"] == "final":
            warm.set()
    stderr = process.stderr.read()
    if process.wait() != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}): {stderr}")
    sampler.join()
    return events, samples, time.monotonic() - started


def out_of_order(events: list[dict]) -> int:
    """Events that move backwards: a final before the previous final's end, a voice-activity
    time before the previous one, a partial starting inside audio already finalised."""
    count, final_end, vad_at = 0, 0.0, 0.0
    for event in events:
        if event["type"] == "final":
            count += event["start"] < final_end - 1e-6 or event["end"] < event["start"]
            final_end = max(final_end, event["end"])
        elif event["type"] == "partial":
            count += event["start"] < final_end - 1e-6
        elif "vad" in event:
            count += event["at"] < vad_at
            vad_at = event["at"]
    return count


def score(events: list[dict], clip: speech.Clip) -> dict:
    finals = [e for e in events if e["type"] == "final"]
    finalised, twice = 0, 0
    for sentence in clip.sentences:
        covering = [f for f in finals
                    if f["start"] < sentence.end + SLACK_S and f["end"] > sentence.start - SLACK_S]
        finalised += bool(covering) and min(f["start"] for f in covering) <= sentence.start + SLACK_S \
            and max(f["end"] for f in covering) >= sentence.end - SLACK_S
        twice += any(a["end"] > b["start"] + 1e-6 for a, b in zip(covering, covering[1:]))
    truth = [w for s in clip.sentences for w in corpus.words(s.text)]
    heard = [w for f in finals for w in corpus.words(f["text"])]
    status = [e for e in events if e["type"] == "status"]
    done = [e for e in status if e.get("state") == "done"]
    return {
        "utterances": len(clip.sentences),
        "utterances_finalised": finalised,
        "utterances_finalised_twice": twice,
        "finals": len(finals),
        "events_out_of_order": out_of_order(events),
        "word_error_rate": round(corpus.word_errors(truth, heard) / len(truth), 4),
        "audio_heard_s": done[-1]["audio_s"] if done else None,
        "dropped_s": round(sum(e.get("dropped_s", 0.0) for e in status), 3),
        "xruns": sum(bool(e.get("xrun")) for e in status),
        "max_lag_s": max((e["lag_s"] for e in status if "lag_s" in e), default=0.0),
        "max_spooled_s": max((e["spooled_s"] for e in status if "spooled_s" in e), default=0.0),
        "lag_status_events": sum("lag_s" in e for e in status),
    }


def memory(samples: list[float]) -> dict:
    """Start: median of the first tenth of the samples; end: of the last tenth."""
    tenth = max(1, len(samples) // 10)
    start, end = statistics.median(samples[:tenth]), statistics.median(samples[-tenth:])
    return {"rss_start_mb": round(start, 1), "rss_end_mb": round(end, 1), "rss_growth_mb": round(end - start, 1),
            "rss_peak_mb": round(max(samples), 1), "rss_samples": len(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the recording")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--slow-factor", type=float, default=4.0,
                        help="the slow-consumer run plays the file this many times faster than the fast run took it")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--shared", action="store_true", help="say in the results that the machine was shared")
    args = parser.parse_args()
    clip = speech_with_pauses(args.minutes * 60)
    audio_s = len(clip.audio) / SAMPLE_RATE
    result = {**stamp(f"python benchmarks/soak.py --minutes {args.minutes:g} --threads {args.threads}"
                      f" --slow-factor {args.slow_factor:g}" + (" --shared" if args.shared else "")),
              "bundle": "nano", "audio_s": round(audio_s, 1), "utterances": len(clip.sentences),
              "machine_shared": args.shared,
              "input_in_memory_mb": round(clip.audio.nbytes / 2**20, 1)}  # file_blocks decodes the file whole
    with tempfile.TemporaryDirectory() as scratch:
        wav = Path(scratch) / "soak.wav"
        soundfile.write(wav, clip.audio, SAMPLE_RATE, subtype="PCM_16")
        events, rss, wall = listen(wav, [], args.threads)
        fast = {"wall_s": round(wall, 1), "speed_x_realtime": round(audio_s / wall, 1), **score(events, clip),
                **memory(rss)}
        pace = round(args.slow_factor * audio_s / wall, 1)
        events, rss, wall = listen(wav, ["--pace", str(pace)], args.threads)
        slow = {"pace_x_realtime": pace, "wall_s": round(wall, 1), **score(events, clip), **memory(rss)}
    result |= {f"fast_{k}": v for k, v in fast.items()} | {f"slow_{k}": v for k, v in slow.items()}
    result["slow_to_fast_rss_peak"] = round(slow["rss_peak_mb"] / fast["rss_peak_mb"], 3)
    markdown = [
        "# Soak: long speech with pauses through `moss-edge listen --input FILE`", "",
        provenance(result), "",
        f"{audio_s / 60:.1f} minutes of audio ({len(clip.sentences)} utterances of espeak-ng commands in "
        f"held-out voices, pauses of {PAUSES_S[0]:g}-{PAUSES_S[1]:g} s), the embedded nano bundle, one run "
        "per mode (a soak is not repeated for a median). **fast**: the file fed as fast as the model takes it. "
        f"**slow consumer**: the file played as a live source at {slow['pace_x_realtime']:g}x real time "
        f"({args.slow_factor:g}x faster than the fast run took it), so the backlog grows and spills to the "
        "spool file. RSS is sampled every 0.5 s from the first final event on (the model loaded and warm); "
        "growth: median of the last tenth of the samples minus the first tenth's. `listen --input` decodes "
        f"the whole file into memory first ({result['input_in_memory_mb']:g} MB of float32 here): most of "
        "the RSS is the input itself; the spool keeps at most 30 s of backlog in memory. Peak RSS of the "
        f"slow-consumer run over the fast run's: {result['slow_to_fast_rss_peak']:g}.",
        "",
        *(["The machine was shared with other work during the run: wall times are noisy.", ""] if args.shared else []),
        "| figure | fast | slow consumer |", "|---|---|---|",
        *(f"| {k} | {fast.get(k, '')} | {slow.get(k, '')} |" for k in [*fast, *(k for k in slow if k not in fast)]),
    ]
    write_results("soak", result, markdown, args.results_dir)
    print("\n".join(markdown))


if __name__ == "__main__":
    main()
