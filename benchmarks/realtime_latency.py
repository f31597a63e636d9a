"""The Realtime WebSocket against `moss-edge listen` on the same audio, and what a question costs.

1. Latency from the end of each spoken utterance to its transcript being complete:
   - over the socket: `moss-edge serve` in its own process, a `websockets` client appending
     40 ms pcm16 blocks at real-time pace; the time the utterance's `completed` event arrives;
   - `moss-edge listen --input CLIP --realtime --format jsonl` in its own process; the time
     the utterance's closing line (`vad: silence`, printed right after its finals) arrives.
   Both measure from the moment the utterance's last sample was released into the stream.
2. A question about the utterance just heard: `ask_stream` on the live session (the audio rows
   already in the KV cache) against offline `MossAudio.ask` on the same audio, with the encoder
   chunks run and the audio rows prefilled counted.

    python benchmarks/realtime_latency.py [--bundle nano] [--runs 3] [--seconds 20]

Writes benchmarks/results/realtime_latency.{json,md}. Needs espeak-ng and the server extra.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import soundfile as sf
from websockets.sync.client import connect

from edge_runtime.features import SAMPLE_RATE as SR
from edge_runtime.transcribe import MossAudio
from results_file import provenance, stamp, write_results  # benchmarks/ is the script's directory
from stream_latency import build_clip

MOSS_EDGE = str(Path(sys.executable).parent / "moss-edge")
BLOCK = int(0.04 * SR)  # 40 ms appends
QUESTIONS = ["What did the speaker ask for?", "Is the speaker a man or a woman?"]


def percentiles(latencies: list[float]) -> dict:
    return {"p50_ms": round(1000 * float(np.percentile(latencies, 50))),
            "p95_ms": round(1000 * float(np.percentile(latencies, 95))), "utterances": len(latencies)}


def latencies_of(closings: list[tuple[float, float]], started: float, ends: list[float]) -> list[float]:
    """For each utterance end (clip seconds), the first turn closing at or after it: (wall time it
    arrived, the turn's end on the stream clock)."""
    found = []
    for end in ends:
        covering = [wall for wall, turn_end in closings if turn_end >= end - 0.05]
        if covering:
            found.append(min(covering) - (started + end))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def socket_run(port: int, int16: np.ndarray, ends: list[float]) -> list[float]:
    closings: list[tuple[float, float]] = []
    with connect(f"ws://127.0.0.1:{port}/v1/realtime?intent=transcription") as ws:
        ws.send(json.dumps({"type": "session.update",
                            "session": {"input_audio_format": {"type": "audio/pcm", "rate": SR}}}))

        def read() -> None:
            for message in ws:
                event = json.loads(message)
                if event["type"] == "conversation.item.input_audio_transcription.completed":
                    closings.append((time.monotonic(), event["audio_end_s"]))
                    if len(closings) == len(ends):
                        return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        started = time.monotonic()
        for lo in range(0, len(int16), BLOCK):  # block i leaves once its last sample has been "spoken"
            time.sleep(max(0.0, started + (lo + BLOCK) / SR - time.monotonic()))
            ws.send(json.dumps({"type": "input_audio_buffer.append",
                                "audio": base64.b64encode(int16[lo:lo + BLOCK].tobytes()).decode()}))
        reader.join(60)
    return latencies_of(closings, started, ends)


def listen_run(bundle: str, wav: Path, ends: list[float], threads: int) -> list[float]:
    process = subprocess.Popen([MOSS_EDGE, "listen", bundle, "--input", str(wav), "--realtime", "--format", "jsonl",
                                "--threads", str(threads)], stdout=subprocess.PIPE, text=True)
    closings, started = [], None
    for line in process.stdout:
        event = json.loads(line)
        if event.get("state") == "listening":
            started = time.monotonic()  # the paced file starts playing now
        elif event.get("vad") == "silence":
            closings.append((time.monotonic(), event["at"]))
    process.wait()
    return latencies_of(closings, started, ends)


def wait_for_server(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("moss-edge serve did not start")


def question_costs(bundle: str, clip: np.ndarray, threads: int) -> dict:
    """Ask about the last utterance of the clip live (its rows in the cache) and offline."""
    model = MossAudio(bundle, threads=threads)
    counts = {"encoder_chunks": 0, "audio_rows_prefilled": 0}
    encode_chunks, eval_embeddings = model.engine.encoder.encode_chunks, model.engine._llm.eval_embeddings

    def counting_encode(batch, lengths):
        counts["encoder_chunks"] += len(batch)
        return encode_chunks(batch, lengths)

    def counting_prefill(rows, *args):
        counts["audio_rows_prefilled"] += len(rows)
        return eval_embeddings(rows, *args)

    model.engine.encoder.encode_chunks, model.engine._llm.eval_embeddings = counting_encode, counting_prefill
    session = model.stream_session()
    for lo in range(0, len(clip), BLOCK):
        session.feed(clip[lo:lo + BLOCK])
    start, end, _ = session.closed_windows[-1]
    rows = {"audio_s": round((end - start) / SR, 2), "live": [], "offline": []}
    for question in QUESTIONS:  # live first: an offline call takes the context from the session
        before = dict(counts)
        stream = session.ask_stream(question, max_tokens=32)
        list(stream)
        answer = stream.answer
        rows["live"].append({"question": question, "answer": answer.text,
                             **{k: counts[k] - before[k] for k in counts},
                             "question_tokens": answer.prompt_tokens - session.last_window.kv_end,
                             "prompt_tokens": answer.prompt_tokens, "encode_ms": 0.0,
                             "prefill_ms": round(1000 * answer.timings["prefill_s"], 1)})
    for question in QUESTIONS:
        before = dict(counts)
        offline = model.ask(clip[start:end], question, max_tokens=32)
        rows["offline"].append({"question": question, "answer": offline.text,
                                **{k: counts[k] - before[k] for k in counts},
                                "prompt_tokens": offline.prompt_tokens,
                                "prefill_ms": round(1000 * offline.timings["prefill_s"], 1),
                                "encode_ms": round(1000 * offline.timings["encode_s"], 1)})
    rows["reclaimed"] = session.reclaimed
    model.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="nano")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the spoken clip")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    clip, ends = build_clip(args.seconds)
    clip = np.concatenate([clip, np.zeros(SR, np.float32)])
    int16 = np.clip(np.round(clip * 32768), -32768, 32767).astype("<i2")
    heard = int16.astype(np.float32) / 32768  # what both paths hear
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        wav = Path(scratch) / "clip.wav"
        sf.write(wav, int16, SR, subtype="PCM_16")
        port = free_port()
        server = subprocess.Popen([MOSS_EDGE, "serve", args.bundle, "--port", str(port), "--threads",
                                   str(args.threads)], stderr=subprocess.DEVNULL)
        try:
            wait_for_server(port, server)
            socket_runs, listen_runs = [], []
            for _ in range(args.runs):  # alternated, so that a busy moment of the machine hits both
                socket_runs.append(socket_run(port, int16, ends))
                listen_runs.append(listen_run(args.bundle, wav, ends, args.threads))
        finally:
            server.terminate()
            server.wait(30)
    rows = []
    for name, runs in (("Realtime WebSocket (moss-edge serve)", socket_runs),
                       ("moss-edge listen --realtime", listen_runs)):
        per_run = [percentiles(r) for r in runs]
        rows.append({"path": name, "runs": per_run,
                     **{k: statistics.median(r[k] for r in per_run) for k in ("p50_ms", "p95_ms", "utterances")}})
    load_after = os.getloadavg()[0]  # other work on the machine: the runs compete with it
    questions = question_costs(args.bundle, heard, args.threads)
    command = (f"python benchmarks/realtime_latency.py --bundle {args.bundle} --runs {args.runs} "
               f"--seconds {args.seconds:g} --threads {args.threads}")
    result = {**stamp(command), "clip_s": round(len(clip) / SR, 1), "utterances": len(ends),
              "load_average_1min": [round(load_before, 1), round(load_after, 1)], "latency": rows,
              "questions": questions}
    print(json.dumps(result, indent=2))
    socket_row, listen_row = rows
    lines = [f"# Realtime WebSocket latency vs `moss-edge listen` ({args.bundle})", "",
             f"{provenance(result)} The machine was shared with other work while this ran: its 1-minute "
             f"load average was {load_before:.1f} before the latency runs and {load_after:.1f} after, on "
             f"{os.cpu_count()} cores.", "",
             f"A {result['clip_s']} s clip of {len(ends)} espeak-ng utterances with 1.4 s pauses, released at "
             "real-time pace in 40 ms blocks. Latency: from the release of an utterance's last sample to the moment "
             "its transcript is complete at the client (the `completed` event over the socket; the turn's closing "
             f"line from `listen`). Medians over {args.runs} runs (alternating), each run's p50/p95 over its "
             "utterances.",
             "", "| path | end of utterance → complete, p50 ms | p95 ms | utterances | p50 ms of each run |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['path']} | {r['p50_ms']} | {r['p95_ms']} | {r['utterances']} | "
              f"{', '.join(str(run['p50_ms']) for run in r['runs'])} |" for r in rows]
    spread = max(max(run["p50_ms"] for run in r["runs"]) - min(run["p50_ms"] for run in r["runs"]) for r in rows)
    lines += ["", f"Socket minus listen: p50 {socket_row['p50_ms'] - listen_row['p50_ms']:+} ms, "
              f"p95 {socket_row['p95_ms'] - listen_row['p95_ms']:+} ms. The p50 of one path varied by up to "
              f"{spread} ms between runs: "
              + ("more than the difference between the paths, so this run cannot tell them apart."
                 if spread >= abs(socket_row["p50_ms"] - listen_row["p50_ms"]) else
                 "less than the difference between the paths."), "",
              f"## A question about the last utterance ({questions['audio_s']} s of audio)", "",
              "| question | path | encoder chunks run | audio rows prefilled | tokens evaluated before the answer | "
              "encode ms | prefill ms | answer |", "|---|---|---|---|---|---|---|---|"]
    for live, offline in zip(questions["live"], questions["offline"]):
        lines.append(f"| {live['question']} | live session | {live['encoder_chunks']} | "
                     f"{live['audio_rows_prefilled']} | "
                     f"{live['question_tokens']} (the question) | {live['encode_ms']} | {live['prefill_ms']} | "
                     f"{live['answer']} |")
        lines.append(f"| | offline `ask` | {offline['encoder_chunks']} | {offline['audio_rows_prefilled']} | "
                     f"{offline['prompt_tokens']} (whole prompt) | {offline['encode_ms']} | {offline['prefill_ms']} | "
                     f"{offline['answer']} |")
    write_results("realtime_latency", result, lines)


if __name__ == "__main__":
    main()
