"""Where a 4B transcription's memory goes: resident set size after each step of the runtime's
own path (the ONNX encoder's session, the GGUF read into memory, the context sized to a 60 s
call with `parallel=3`, the transcription itself), each in a fresh process, and the GGUF
loaded memory-mapped, llama.cpp's default, to show what reading it instead saves.

    python benchmarks/memory_breakdown.py --bundle int4-Q4_K_M=/work/bench/q4b/int4-Q4_K_M

Writes benchmarks/results/memory_breakdown.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import soundfile
from results_file import RESULTS, provenance, stamp, write_results  # benchmarks/ is the script's directory
from small_machine_4b import transcript_between
from stream_latency import SR, build_clip

from edge_runtime.bundle import load_bundle

# Both child scripts start with this: the process's memory now, from the kernel, in bytes.
STATUS = """
def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}
"""

# One process: argv = bundle, clip, threads, ends (JSON). Prints one JSON line of steps.
RUNTIME_STEPS = STATUS + """
import json, sys
from edge_runtime.audio import load_audio
from edge_runtime.transcribe import MossAudio
from small_machine_4b import transcript_between
bundle, clip, threads, ends = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
steps = {"python and the runtime imported": status()}
samples = load_audio(clip)
model = MossAudio(bundle, threads=threads, parallel=3)
steps["encoder session and GGUF loaded"] = status()
model.forced_output = lambda start, end: transcript_between(ends, start, end)
segments, info = model.transcribe(samples, timestamps="sentence", vad_filter=True)
list(segments)
steps["after the transcription"] = status()
steps["context tokens"] = model.engine.n_ctx
print(json.dumps(steps))
"""

# One process: argv = GGUF path, "mapped" or "read". Loads the model alone.
LLM_ALONE = STATUS + """
import json, sys
import llama_cpp as C
from edge_runtime import llm
llm._init_backend()
params = C.llama_model_default_params()
params.use_extra_bufts = llm._cpu_extra_layouts_usable()
params.load_mode = C.LLAMA_LOAD_MODE_MMAP if sys.argv[2] == "mapped" else C.LLAMA_LOAD_MODE_NONE
model = C.llama_model_load_from_file(sys.argv[1].encode(), params)
assert model
print(json.dumps(status()))
"""


def child(script: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          cwd=Path(__file__).parent, env=os.environ | {"PYTHONPATH": str(Path(__file__).parent)})
    if done.returncode != 0:
        raise SystemExit(f"step failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def gib(n: float) -> float:
    return round(n / 2**30, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", action="append", required=True, help="NAME=PATH, repeatable")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seconds", type=float, default=60.0, help="the clip's length (about)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    clip, ends = build_clip(args.seconds)
    result = {**stamp("python benchmarks/memory_breakdown.py " + " ".join(sys.argv[1:])), "threads": args.threads,
              "clip_s": round(len(clip) / SR, 1), "bundles": {}}
    lines = ["# Where a 4B transcription's memory goes", "", provenance(result), "",
             f"Resident set size (GiB) in fresh processes; the transcription: a {result['clip_s']} s clip, "
             "sentence timestamps, `parallel=3`, `vad_filter=True`, the context sized to the call, forced "
             "transcripts (docs/benchmarks.md#forced-output). anon: the process's own memory; file: mapped "
             "file pages it holds. Weights: the encoder and GGUF files.", "",
             "| bundle | step | RSS | anon | file | peak so far | peak - weights |", "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as scratch:
        clip_path = Path(scratch) / "clip.wav"
        soundfile.write(clip_path, clip, SR)
        for name, path in (spec.split("=", 1) for spec in args.bundle):
            bundle = load_bundle(Path(path))
            weights = sum(f.stat().st_size for f in (bundle.encoder_path, bundle.llm_path,
                                                     *(bundle.encoder_path.parent / x
                                                       for x in bundle.manifest.encoder.extra_files)))
            steps = child(RUNTIME_STEPS, path, str(clip_path), str(args.threads), json.dumps(ends))
            context = steps.pop("context tokens")
            alone = {mode: child(LLM_ALONE, str(bundle.llm_path), mode) for mode in ("mapped", "read")}
            result["bundles"][name] = {"path": path, "weights_bytes": weights, "context_tokens": context,
                                       "steps": steps, "llm_alone": alone}
            gguf = bundle.llm_path.stat().st_size
            # Nothing is loaded at the first step, so nothing to hold it against
            rows = [*((step, s, weights if i else None) for i, (step, s) in enumerate(steps.items())),
                    *((f"the GGUF alone, {mode} (weights: the GGUF)", s, gguf) for mode, s in alone.items())]
            for step, s, basis in rows:
                over = "" if basis is None else gib(s["VmHWM"] - basis)
                lines.append(f"| {name} | {step} | {gib(s['VmRSS'])} | {gib(s['RssAnon'])} | {gib(s['RssFile'])} | "
                             f"{gib(s['VmHWM'])} | {over} |")
            lines.append(f"| {name} | weights {gib(weights)} GiB (GGUF {gib(gguf)}); context {context} tokens "
                         "| | | | | |")
    write_results("memory_breakdown", result, lines, args.results_dir)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
