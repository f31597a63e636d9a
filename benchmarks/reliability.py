"""Reliability figures in one table (docs/reliability.md): the server under load, a longer fuzz
run, and export/quantize killed at more points than CI's. benchmarks/soak.py's results join
the table when benchmarks/results/soak.json exists (`soak_rows`).

Server load: `moss-edge serve nano` in its own process on loopback, and `--clients` threads
for `--seconds`, each picking requests at random: transcriptions in every response format and
as server-sent events, chats with audio (whole and streamed), through the real `openai`
client; and, over raw sockets, what misbehaving clients send: garbage audio, broken JSON, a
wrong key, oversized bodies, uploads trickled in pieces, streams abandoned after one event.
Every status must be a documented one, every 200 must equal what the same request got in a
sequential pass before the load (greedy decoding), the server must still be running and
answer /health and a request after. Reported: requests/s, p50/p95 latency per kind against
the sequential pass, and peak RSS of the server process.

Fuzz: tests/test_fuzz.py with FUZZ_EXAMPLES examples per property, random seeds.

Crash safety: `export` (tiny random checkpoint) and `quantize` (its bundle) SIGKILLed when
each phase's file shows up in staging and at random times; then one rerun each.

    python benchmarks/reliability.py                      # ~8 minutes on 2 cores
    python benchmarks/reliability.py --seconds 30 --fuzz-examples 100 --random-kills 1   # quick
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import openai
from results_file import RESULTS, provenance, stamp, write_results  # benchmarks/ is the script's directory

from edge_runtime.speech import speak

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # the repository: tests/ is not installed
from conftest import TINY_CONFIGS  # noqa: E402
from test_crash_safety import MOSS_EDGE, after, run_killed, staged  # noqa: E402

from edge_runtime.bundle import BundleError, load_bundle  # noqa: E402
from tests.fixtures.checkpoints import write_random_checkpoint  # noqa: E402

KEY = "reliability-key"
DOCUMENTED = {200, 400, 401, 413, 429, 503, 504}
MAX_BODY_MB = 2
CHAT_TOKENS = 24
TEXTS = ["Turn on the lights in the kitchen.", "Set a timer for ten minutes.", "Play some music in the bedroom."]


# --- one request of each kind -------------------------------------------------------------------

@dataclass
class Outcome:
    status: int  # HTTP status; 0 when the client itself hung up (disconnect kind)
    body: str  # what is compared with the sequential pass (200 only)
    seconds: float


@dataclass
class Client:
    port: int
    clips: list[bytes]
    api: openai.OpenAI = field(init=False)

    def __post_init__(self) -> None:
        self.api = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=KEY, max_retries=0,
                                 timeout=120)

    def _openai(self, call: Callable[[], object]) -> tuple[int, str]:
        try:
            raw = call()
        except openai.APIStatusError as error:
            return error.status_code, ""
        return raw.status_code, raw.text

    def transcribe(self, clip: int, response_format: str, words: bool = False) -> tuple[int, str]:
        extra = {"timestamp_granularities": ["word"]} if words else {}
        return self._openai(lambda: self.api.audio.transcriptions.with_raw_response.create(
            model="nano", file=("clip.wav", self.clips[clip]), response_format=response_format, **extra))

    def chat(self, clip: int) -> tuple[int, str]:
        status, text = self._openai(lambda: self.api.chat.completions.with_raw_response.create(
            model="nano", max_tokens=CHAT_TOKENS, temperature=0, messages=_messages(self.clips[clip])))
        if status != 200:
            return status, ""
        reply = json.loads(text)
        return status, json.dumps({"choices": reply["choices"], "usage": reply["usage"]}, sort_keys=True)

    def raw(self, path: str, body: bytes, content_type: str, key: str = KEY, pieces: int = 1,
            pause_s: float = 0.0, hang_up_after: int | None = None) -> tuple[int, str]:
        """A request over a plain socket: sent in `pieces` with pauses (a slow upload), or
        abandoned after `hang_up_after` server-sent events (a client that goes away)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            connection.putrequest("POST", path)
            for name, value in (("Content-Type", content_type), ("Content-Length", str(len(body))),
                                ("Authorization", f"Bearer {key}")):
                connection.putheader(name, value)
            connection.endheaders()
            step = -(-len(body) // pieces)
            for start in range(0, len(body), step):
                connection.send(body[start:start + step])
                time.sleep(pause_s)
            response = connection.getresponse()
            if hang_up_after is not None and response.status == 200:
                for _ in range(hang_up_after):
                    response.fp.readline()
                return 0, ""
            return response.status, _stable(response.read().decode())
        finally:
            connection.close()


def _messages(clip: bytes) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is said?"}, {
        "type": "input_audio", "input_audio": {"data": base64.b64encode(clip).decode(), "format": "wav"}}]}]


def _stable(text: str) -> str:
    """A streamed chat without the fields that differ per request (id, created)."""
    return re.sub(r'"(id|created)": ?("[^"]*"|\d+), ?', "", text)


def _multipart(fields: dict[str, str], audio: bytes) -> tuple[bytes, str]:
    boundary = "reliability-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                 f"Content-Type: audio/wav\r\n\r\n".encode() + audio + f"\r\n--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def request_kinds(clips: list[bytes], rng: random.Random) -> dict[str, Callable[[Client], tuple[int, str]]]:
    """Kind -> one request of it. The well-formed kinds are deterministic (compared with the
    sequential pass); the misbehaving ones expect one status, or none (disconnects)."""
    transcription = "/v1/audio/transcriptions"
    kinds: dict[str, Callable[[Client], tuple[int, str]]] = {}
    for i in range(len(clips)):
        for fmt in ("json", "text", "srt", "vtt", "verbose_json"):
            kinds[f"transcribe {fmt} #{i}"] = lambda c, i=i, fmt=fmt: c.transcribe(i, fmt)
        kinds[f"transcribe verbose_json words #{i}"] = lambda c, i=i: c.transcribe(i, "verbose_json", True)
        kinds[f"transcribe SSE #{i}"] = lambda c, i=i: c.raw(transcription, *_multipart({"stream": "true"}, clips[i]))
        kinds[f"chat #{i}"] = lambda c, i=i: c.chat(i)
        stream = json.dumps({"model": "nano", "max_tokens": CHAT_TOKENS, "stream": True,
                             "messages": _messages(clips[i])}).encode()
        kinds[f"chat SSE #{i}"] = lambda c, body=stream: c.raw("/v1/chat/completions", body, "application/json")
    slow = _multipart({"response_format": "text"}, clips[0])
    kinds["slow upload (text #0)"] = lambda c: c.raw(transcription, *slow, pieces=8, pause_s=0.25)
    kinds["garbage audio"] = lambda c: c.raw(transcription, *_multipart({}, rng.randbytes(3000)))
    kinds["broken JSON"] = lambda c: c.raw("/v1/chat/completions", b'{"messages": [', "application/json")
    kinds["wrong key"] = lambda c: c.raw(transcription, *_multipart({}, clips[0]), key="wrong")
    big = _multipart({}, bytes(MAX_BODY_MB * 2**20 + 1000))
    kinds["oversized body"] = lambda c: c.raw(transcription, *big)
    hang = _multipart({"stream": "true"}, clips[1])
    kinds["disconnect mid-stream"] = lambda c: c.raw(transcription, *hang, hang_up_after=2)
    return kinds


BUSY = {429, 503, 504}  # documented answers of a busy server
# what the misbehaving kinds must get; audio is decoded on the inference thread, so a request
# with garbage audio (or one abandoned mid-stream) can be turned away as busy first
EXPECTED = {"garbage audio": {400} | BUSY, "broken JSON": {400}, "wrong key": {401}, "oversized body": {413},
            "disconnect mid-stream": {0} | BUSY}


# --- the server ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, threads: int) -> subprocess.Popen:
    process = subprocess.Popen([str(MOSS_EDGE), "serve", "nano", "--port", str(port), "--api-key", KEY,
                                "--threads", str(threads), "--max-body-mb", str(MAX_BODY_MB), "--timeout", "120"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server exited: {process.stderr.read()}")
        try:
            if health(port)[0] == 200:
                return process
        except OSError:
            time.sleep(0.2)
    sys.exit("the server did not start within 120 s")


def health(port: int) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def rss_kib(pid: int, field_name: str) -> int:
    line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith(field_name))
    return int(line.split()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def server_load(seconds: float, clients: int, threads: int, seed: int) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="reliability-"))
    clips = [speak(text, workdir / f"clip{i}.wav").read_bytes() for i, text in enumerate(TEXTS)]
    port = free_port()
    server = start_server(port, threads)
    kinds = request_kinds(clips, random.Random(seed))
    # the sequential pass: each kind once, one at a time, the reference for every 200 under load
    reference: dict[str, Outcome] = {}
    for name, send in kinds.items():
        started = time.perf_counter()
        status, body = send(Client(port, clips))
        reference[name] = Outcome(status, body, time.perf_counter() - started)
    bad_reference = {n: o.status for n, o in reference.items() if o.status != 200 and n not in EXPECTED}
    if bad_reference:
        sys.exit(f"the sequential pass failed: {bad_reference}")
    rss_before_kib = rss_kib(server.pid, "VmRSS")
    outcomes: dict[str, list[Outcome]] = defaultdict(list)
    problems: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    rss_samples: list[int] = []

    def client_loop(index: int) -> None:
        rng, client = random.Random(seed * 1000 + index), Client(port, clips)
        names = sorted(kinds)
        name = rng.choice(names)
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                status, body = kinds[name](client)
            except Exception as exc:  # a broken connection is a finding, not a crash of the benchmark
                status, body = -1, f"{type(exc).__name__}: {exc}"
            outcome = Outcome(status, body, time.perf_counter() - started)
            with lock:
                outcomes[name].append(outcome)
                allowed = EXPECTED.get(name, {200} | BUSY)
                if status not in allowed:
                    problems.append(f"{name}: status {status} {body[:200]}")
                elif status == 200 and body != reference[name].body:
                    problems.append(f"{name}: a 200 differs from the sequential pass")
            if status in BUSY:  # as a client honouring 429 would: wait, then send it again
                time.sleep(rng.uniform(0.05, 0.3))
            else:
                name = rng.choice(names)

    def sample_rss() -> None:
        while time.monotonic() < stop_at and server.poll() is None:
            rss_samples.append(rss_kib(server.pid, "VmRSS"))
            time.sleep(0.5)

    started = time.monotonic()
    workers = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    workers.append(threading.Thread(target=sample_rss))
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.monotonic() - started
    alive = server.poll() is None
    drained_within_s = None
    if alive:
        waited = time.monotonic()
        while health(port)[1]["jobs"] and time.monotonic() - waited < 60:
            time.sleep(0.1)
        drained_within_s = round(time.monotonic() - waited, 2)
    health_after = health(port) if alive else (None, {})
    check = "transcribe verbose_json #0"
    after_status, after_body = kinds[check](Client(port, clips)) if alive else (None, "")
    peak_kib = rss_kib(server.pid, "VmHWM") if alive else None
    server.send_signal(signal.SIGINT)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
    all_outcomes = [o for per in outcomes.values() for o in per]
    statuses = Counter(o.status for o in all_outcomes)
    per_kind = {}
    for name in sorted(kinds):
        got = outcomes.get(name, [])
        done = [o.seconds for o in got if o.status in (200, 0) or name in EXPECTED]
        per_kind[name] = {"requests": len(got), "statuses": dict(Counter(o.status for o in got)),
                          "sequential_s": round(reference[name].seconds, 3),
                          "p50_s": round(statistics.median(done), 3) if done else None,
                          "p95_s": round(percentile(done, 0.95), 3) if done else None}
    ok = [o.seconds for o in all_outcomes if o.status == 200]
    sequential_ok = [reference[n].seconds for n in kinds if reference[n].status == 200]
    return {
        "seconds": round(wall, 1), "clients": clients, "server_threads": threads, "seed": seed,
        "requests": len(all_outcomes), "requests_per_s": round(len(all_outcomes) / wall, 2),
        "ok_per_s": round(len(ok) / wall, 2),
        # the rate of 200s one client would get sending the well-formed kinds one after another
        "sequential_ok_per_s": round(len(sequential_ok) / sum(sequential_ok), 2), "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "undocumented_or_unexpected": problems[:50], "problems": len(problems),
        "ok_p50_s": round(statistics.median(ok), 3) if ok else None,
        "ok_p95_s": round(percentile(ok, 0.95), 3) if ok else None,
        "sequential_p50_s": round(statistics.median(sequential_ok), 3),
        "sequential_p95_s": round(percentile(sequential_ok, 0.95), 3),
        "server_alive_after": alive, "drained_within_s": drained_within_s,
        "health_after": {"status": health_after[0], **health_after[1]},
        "request_after": {"status": after_status, "equal_to_sequential": after_body == reference[check].body},
        "rss_after_sequential_mib": round(rss_before_kib / 1024, 1),
        "rss_max_sampled_mib": round(max(rss_samples) / 1024, 1) if rss_samples else None,
        "rss_peak_mib": round(peak_kib / 1024, 1) if peak_kib else None,
        "per_kind": per_kind,
    }


# --- fuzz ------------------------------------------------------------------------------------------

def long_fuzz(examples: int) -> dict:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fuzz.py"],
                            cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "FUZZ_EXAMPLES": str(examples), "FUZZ_RANDOM": "1"})
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-300:]
    failures = re.findall(r"^FAILED (\S+)", result.stdout, re.M)
    return {"examples_per_property": examples, "model_examples_per_property": max(10, examples // 3),
            "summary": summary, "failed": failures, "exit_code": result.returncode,
            "seconds": round(time.perf_counter() - started, 1)}


# --- crash safety -----------------------------------------------------------------------------------

def crash_kills(random_kills: int, seed: int) -> dict:
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="reliability-crash-"))
    checkpoint = write_random_checkpoint(work / "checkpoint", TINY_CONFIGS["k1"])
    results = {}
    for command, make_args, phases in (
            ("export", lambda out: ["export", str(checkpoint), str(out), "--llm-type", "F32"],
             ["staging", "encoder.onnx", "llm.gguf"]),
            ("quantize", lambda out: ["quantize", str(work / "export" / "bundle"), str(out), "--encoder", "int4",
                                      "--llm", "Q8_0", "--threads", "1"], ["staging", "encoder.onnx", "llm.gguf"])):
        out = work / command / "bundle" if command == "export" else work / "quantize" / "bundle"
        out.parent.mkdir(exist_ok=True)
        started = time.perf_counter()
        clean = subprocess.run([str(MOSS_EDGE), *make_args(work / command / "timing")], capture_output=True)
        full_s = time.perf_counter() - started
        if clean.returncode != 0:
            sys.exit(f"{command} failed: {clean.stderr.decode()[-2000:]}")
        # each point's condition is made as its run starts (a time counts from there)
        points = [(f"{p} staged", lambda p=p: staged(out, None if p == "staging" else p)) for p in phases]
        points += [(f"random {t:.1f} s", lambda t=t: after(t))
                   for t in (rng.uniform(0.5, full_s) for _ in range(random_kills))]
        kills = []
        for label, condition in points:
            killed = run_killed(make_args(out), out, condition())
            target = "absent" if not out.exists() else "whole bundle" if _loads(out) else "HALF BUNDLE"
            kills.append({"point": label, "killed": killed.returncode == -signal.SIGKILL,
                          "seconds": round(killed.seconds, 2), "target": target,
                          "leftovers": len(killed.leftovers), "error": killed.error})
            if target == "whole bundle":  # finished before the kill: the next run needs the place free
                shutil.rmtree(out)
        rerun = subprocess.run([str(MOSS_EDGE), *make_args(out)], capture_output=True, text=True)
        results[command] = {
            "rerun_error": rerun.stderr[-1000:] if rerun.returncode else "",
            "full_run_s": round(full_s, 1), "kills": kills,
            "half_bundles": sum(k["target"] == "HALF BUNDLE" for k in kills),
            "rerun_ok": rerun.returncode == 0 and _loads(out),
            "leftovers_after_rerun": len(list(out.parent.glob(f".{out.name}.*")))}
    return results


def _loads(out: Path) -> bool:
    try:
        load_bundle(out, verify_hashes=True)
        return True
    except BundleError:
        return False


# --- the table --------------------------------------------------------------------------------------

def soak_rows(soak: dict) -> list[str]:
    """benchmarks/soak.py's figures (results/soak.json) as rows of the reliability table, whose
    columns are | area | check | result | source |: one row for the run, one per phase whose
    figures share a prefix (`fast_...`, `slow_...`). The place to render them better."""
    source = f"soak.py, {soak.get('date', '?')}: `{soak.get('command', '?')}`"
    phases = {"fast": "fed as fast as the model takes it", "slow": "forced slow consumer (spooling)"}
    groups: dict[str, list[str]] = {}
    for name, value in soak.items():
        if name in ("machine", "date", "command") or isinstance(value, (dict, list)):
            continue
        prefix, _, rest = name.partition("_")
        phase = prefix if prefix in phases else ""
        groups.setdefault(phase, []).append(f"{(rest if phase else name).replace('_', ' ')} {value}")
    return [f"| soak | {phases.get(phase, 'the run')} | {', '.join(figures)} | {source} |"
            for phase, figures in groups.items()]


def table(result: dict, soak: dict | None) -> list[str]:
    load, fuzz, crash = result["server_load"], result["fuzz"], result["crash"]
    here = "this script"
    rows = [
        "| area | check | result | source |", "|---|---|---|---|",
        f"| server load | {load['clients']} clients for {load['seconds']} s, nano, {load['server_threads']} server "
        f"thread(s) | {load['requests']} requests, {load['requests_per_s']} req/s; {load['ok_per_s']} 200/s "
        f"(sequential pass: {load['sequential_ok_per_s']} 200/s) | {here} |",
        f"| server load | statuses | {', '.join(f'{k}: {v}' for k, v in load['statuses'].items())} | {here} |",
        f"| server load | undocumented statuses, unexpected statuses, 200s differing from the sequential pass | "
        f"{load['problems']} | {here} |",
        f"| server load | latency of 200s, p50 / p95 (sequential pass: p50 / p95) | {load['ok_p50_s']} / "
        f"{load['ok_p95_s']} s ({load['sequential_p50_s']} / {load['sequential_p95_s']} s) | {here} |",
        f"| server load | server process after the load: alive, /health, a request | "
        f"{'alive' if load['server_alive_after'] else 'DEAD'}, {load['health_after'].get('status')} "
        f"(jobs {load['health_after'].get('jobs')}), {load['request_after']['status']} "
        f"{'equal to' if load['request_after']['equal_to_sequential'] else 'DIFFERENT from'} the sequential pass | {here} |",
        f"| server load | RSS after the sequential pass / max sampled under load / peak (VmHWM) | "
        f"{load['rss_after_sequential_mib']} / {load['rss_max_sampled_mib']} / {load['rss_peak_mib']} MiB | {here} |",
        f"| fuzz | tests/test_fuzz.py, {fuzz['examples_per_property']} examples per property "
        f"({fuzz['model_examples_per_property']} through the model), random seeds | {fuzz['summary']} | {here} |",
    ]
    for command, c in crash.items():
        killed = sum(k["killed"] for k in c["kills"])
        rows.append(f"| crash safety | `{command}` at {len(c['kills'])} kill points ({killed} SIGKILLed before it "
                    f"exited; a full run takes {c['full_run_s']} s): half bundles at the target / rerun / leftovers "
                    f"after it | {c['half_bundles']} / {'ok' if c['rerun_ok'] else 'FAILED'} / "
                    f"{c['leftovers_after_rerun']} | {here} |")
    if soak is not None:
        rows += soak_rows(soak)
    return rows


def markdown(result: dict, soak: dict | None, shared: bool) -> list[str]:
    load = result["server_load"]
    lines = ["# Reliability", "", provenance(result), "",
             "Server load on loopback with the embedded nano bundle; each 200 compared with the same "
             "request's answer in a sequential pass before the load (greedy decoding). Documented statuses: "
             "200/400/401/413/429/503/504 (docs/server.md). Latencies are percentiles over all requests of "
             "one run; kill points marked `killed False` finished (or failed) before their kill."
             + (" The machine's 2 cores were shared with other work during the run." if shared else ""), "",
             *table(result, soak), "",
             "## Server load per request kind", "",
             "| kind | requests | statuses | sequential s | p50 s | p95 s |", "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {k['requests']} | {k['statuses']} | {k['sequential_s']} | {k['p50_s']} | {k['p95_s']} |"
              for name, k in load["per_kind"].items()]
    lines += ["", "## Crash-safety kill points", "", "| command | point | killed | after s | target | leftovers |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {command} | {k['point']} | {k['killed']} | {k['seconds']} | {k['target']} | {k['leftovers']} |"
              for command, c in result["crash"].items() for k in c["kills"]]
    if load["undocumented_or_unexpected"]:
        lines += ["", "## Problems under load", ""] + [f"- {p}" for p in load["undocumented_or_unexpected"]]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0, help="server load duration")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--server-threads", type=int, default=1)
    parser.add_argument("--fuzz-examples", type=int, default=500)
    parser.add_argument("--random-kills", type=int, default=3, help="random-time kills per command")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shared", action="store_true", help="say in the .md that the machine was shared")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    command = "python benchmarks/reliability.py " + " ".join(sys.argv[1:])
    result = {**stamp(command), "server_load": server_load(args.seconds, args.clients, args.server_threads, args.seed)}
    result["fuzz"] = long_fuzz(args.fuzz_examples)
    result["crash"] = crash_kills(args.random_kills, args.seed)
    soak_file = args.results_dir / "soak.json"
    soak = json.loads(soak_file.read_text()) if soak_file.exists() else None
    lines = markdown(result, soak, args.shared)
    write_results("reliability", result, lines, args.results_dir)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
