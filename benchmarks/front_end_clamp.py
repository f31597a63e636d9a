"""What the live front end's running-maximum clamp changes against the offline global one.

Offline, log-mel values are clamped at (clip maximum - 8) (docs/format.md#log-mel-front-end);
live, each 4 s chunk is clamped with the maximum seen so far in its window
(docs/format.md#streaming-clamp). For utterances the way a VAD window captures them (0.3 s
of lead-in), at several levels, and with a quiet start that gets louder,
this measures the share of mel values that differ, the relative change of the encoder rows
and whether greedy decoding of the window changes.

    python benchmarks/front_end_clamp.py --bundle PATH [--name tiny]

Writes benchmarks/results/front_end_clamp_<name>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from edge_runtime.audio import load_audio
from edge_runtime.features import SAMPLE_RATE as SR
from edge_runtime.features import LogMelStream, log_mel_spectrogram
from edge_runtime.speech import SAMPLE_TEXT, speak
from edge_runtime.transcribe import MossAudio
from results_file import provenance, stamp, write_results  # benchmarks/ is the script's directory



def live_mel(audio: np.ndarray) -> np.ndarray:
    stream = LogMelStream()
    stream.append(audio)
    chunks = []
    while stream.ready_frames() >= 400:
        chunks.append(stream.take(400))
    chunks.append(stream.finish())
    return np.concatenate(chunks, axis=1)


def greedy(model: MossAudio, mel: np.ndarray, tokens: int = 32) -> list[int]:
    sequence = model.prefill(model.engine.encoder.encode(mel), "Transcribe the audio.")
    return list(sequence.decode(tokens, model.manifest.tokens.stop))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--name", default="tiny")
    args = parser.parse_args()
    model = MossAudio(args.bundle, threads=2, kv_type="f32", flash_attention="off")
    with tempfile.TemporaryDirectory() as scratch:
        speech = load_audio(speak(SAMPLE_TEXT, Path(scratch) / "speech.wav"))
    lead_in = np.zeros(int(0.3 * SR), np.float32)
    cases = {f"speech at {gain_db} dB": np.concatenate([lead_in, speech * 10 ** (gain_db / 20)])
             for gain_db in (0, -20, -40)}
    quiet_then_loud = speech.copy()
    quiet_then_loud[: 6 * SR] *= 0.05  # -26 dB for the first 6 s
    cases["quiet start, louder after 6 s"] = np.concatenate([lead_in, quiet_then_loud])
    rows = []
    for name, audio in cases.items():
        offline, live = log_mel_spectrogram(audio), live_mel(audio)
        encoded_offline, encoded_live = model.engine.encoder.encode(offline), model.engine.encoder.encode(live)
        tokens_offline, tokens_live = greedy(model, offline), greedy(model, live)
        same = next((i for i, (a, b) in enumerate(zip(tokens_offline, tokens_live)) if a != b), len(tokens_offline))
        rows.append({
            "case": name, "seconds": round(len(audio) / SR, 1),
            "mel_values_changed_pct": round(100 * float(np.mean(offline != live)), 2),
            "chunks_changed": int(sum(not np.array_equal(offline[:, i:i + 400], live[:, i:i + 400])
                                      for i in range(0, offline.shape[1], 400))),
            "encoder_rows_rel_change": float(np.abs(encoded_offline - encoded_live).max()
                                             / np.abs(encoded_offline).max()),
            "greedy_tokens_identical_prefix": f"{same}/{len(tokens_offline)}",
        })
        print(json.dumps(rows[-1]))
    result = {**stamp(f"python benchmarks/front_end_clamp.py --bundle {args.bundle} --name {args.name}"),
              "bundle_model_card": model.manifest.model_card or "random weights (no model card)", "rows": rows}
    table = ["| case | s | mel values changed % | chunks changed | encoder rows rel. change | greedy tokens identical |",
             "|---|---|---|---|---|---|"]
    table += [f"| {r['case']} | {r['seconds']} | {r['mel_values_changed_pct']} | {r['chunks_changed']} | "
              f"{r['encoder_rows_rel_change']:.2e} | {r['greedy_tokens_identical_prefix']} |" for r in rows]
    write_results(f"front_end_clamp_{args.name}", result, [
        f"# Live front end (running-maximum clamp) vs offline (global maximum) — {args.name} bundle", "",
        provenance(result), "", *table, "",
        "Greedy agreement is over 32 tokens; on a random-weight bundle it shows sensitivity, not quality."])

if __name__ == "__main__":
    main()
