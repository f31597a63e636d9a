"""llama.cpp on cores something else also wants: how its threads wait for each other matters.

ggml's CPU threads (OpenMP, GNU libgomp in llama-cpp-python's builds) meet at a barrier after
every operation, and libgomp has a thread that arrives first spin there up to 300 000 times
before it sleeps. This measures LLM prefill and decode through the runtime's engine
(measure.llm_rates) with libgomp's default and with two settings a user can make in the
environment (docs/devices.md#shared-cores), on an idle machine and beside other busy processes
(pure-Python loops, one core each, at the runtime's priority: another app, a browser, Home
Assistant beside it). Every pass is a fresh process, since libgomp reads its settings once.

    python benchmarks/shared_cores.py --bundle nano=nano --bundle int4-Q4_K_M=/path/to/bundle

Writes benchmarks/results/shared_cores.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from results_file import RESULTS, provenance, stamp, write_results  # benchmarks/ is the script's directory

# the environment each pass gets, beside the caller's minus both variables
POLICIES = {"libgomp's default (spin 300000)": {}, "GOMP_SPINCOUNT=1000": {"GOMP_SPINCOUNT": "1000"},
            "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}}
LOADS = ("idle", "busy")

RATES = """
import json, sys
from edge_runtime.bundle import load_bundle
from edge_runtime.engine import Engine
from edge_runtime.measure import llm_rates
bundle, threads, prefill, decode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
engine = Engine(load_bundle(bundle), ["CPUExecutionProvider"], gpu_layers=0, threads=threads,
                n_ctx=prefill + decode + 64)
print(json.dumps(llm_rates(engine, prefill, decode, runs=1)))
"""
BUSY = "while True: pass"
SETTLE_S = 3.0  # for the scheduler to spread the busy processes over the cores


def rates(bundle: str, policy: dict[str, str], args: argparse.Namespace) -> dict[str, float]:
    """One pass (after a warm-up) in a fresh process with the wait policy `policy`."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} | policy
    done = subprocess.run([sys.executable, "-c", RATES, bundle, str(args.threads), str(args.prefill),
                           str(args.decode)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"rates of {bundle} with {policy} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def measure(bundle: str, args: argparse.Namespace) -> dict[str, dict[str, dict[str, float]]]:
    """policy -> load -> median rates over `runs` rounds; a round measures every policy idle,
    then every policy beside freshly started busy processes."""
    passes: dict[str, dict[str, list[dict[str, float]]]] = {p: {load: [] for load in LOADS} for p in POLICIES}
    for _ in range(args.runs):
        for load in LOADS:
            busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.busy if load == "busy" else 0)]
            try:
                time.sleep(SETTLE_S if busy else 0.0)
                for name, policy in POLICIES.items():
                    passes[name][load].append(rates(bundle, policy, args))
                    print(json.dumps({"bundle": bundle, "policy": name, "load": load, **passes[name][load][-1]}),
                          flush=True)
            finally:
                for process in busy:
                    process.kill()
                    process.wait()
    return {name: {load: {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
                   for load, runs in by_load.items()} for name, by_load in passes.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", action="append", required=True, help="NAME=PATH (or an embedded name), repeatable")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="llama.cpp threads (default: every core)")
    parser.add_argument("--busy", type=int, default=os.cpu_count(), help="busy processes beside it in the busy cells")
    parser.add_argument("--prefill", type=int, default=128)
    parser.add_argument("--decode", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    bundles = dict(b.split("=", 1) for b in args.bundle)
    load_average = os.getloadavg()[0]
    measured = {name: measure(path, args) for name, path in bundles.items()}
    result = {**stamp("python benchmarks/shared_cores.py " + " ".join(f"--bundle {b}" for b in args.bundle)
                      + f" --threads {args.threads} --busy {args.busy} --prefill {args.prefill} "
                      f"--decode {args.decode} --runs {args.runs}"),
              "load_average_at_start": round(load_average, 2), "rates": measured}
    default = list(POLICIES)[0]
    lines = ["# llama.cpp's threads on shared cores", "", provenance(result), "",
             f"Prefill ({args.prefill} tokens) and decode ({args.decode} tokens) through the runtime's engine, "
             f"{args.threads} llama.cpp threads, medians of {args.runs} rounds, a fresh process per pass. *busy*: "
             f"{args.busy} other processes each spinning a pure-Python loop, at the same priority. Wait policies: "
             "how long a llama.cpp thread that reaches an OpenMP barrier first spins before it sleeps, "
             f"set in the environment. 1-minute load average at the start: "
             f"{load_average:.2f}.", "",
             "| bundle | wait policy | prefill tok/s idle | prefill tok/s busy | decode tok/s idle | decode tok/s busy "
             "| decode busy / idle |", "|---|---|---|---|---|---|---|"]
    for bundle, by_policy in measured.items():
        for policy, cells in by_policy.items():
            idle, busy = cells["idle"], cells["busy"]
            lines.append(f"| {bundle} | {policy} | {idle['prefill_tok_s']} | {busy['prefill_tok_s']} | "
                         f"{idle['decode_tok_s']} | {busy['decode_tok_s']} | "
                         f"{busy['decode_tok_s'] / idle['decode_tok_s']:.2f} |")
        for policy in list(POLICIES)[1:]:
            ratio = {f"{phase} {load}": by_policy[policy][load][f"{phase}_tok_s"]
                     / by_policy[default][load][f"{phase}_tok_s"] for phase in ("prefill", "decode") for load in LOADS}
            result.setdefault("over_default", {}).setdefault(bundle, {})[policy] = {k: round(v, 2)
                                                                                   for k, v in ratio.items()}
            lines.append(f"| {bundle} | {policy} / default | " + " | ".join(f"{v:.2f}x" for v in ratio.values())
                         + " | |")
    write_results("shared_cores", result, lines, args.results_dir)


if __name__ == "__main__":
    main()
