"""Export cost at true 4B scale: wall time and peak memory of each step, and file sizes.

A random-weight checkpoint with the published MOSS-Audio-4B-Instruct config costs exactly
what the real one costs to export. Each step runs in its own process so its peak resident
memory (ru_maxrss from wait4) is its own.

    python benchmarks/export_4b.py --work-dir /path/with/25GB/free

Writes benchmarks/results/export_4b.json and benchmarks/results/export_4b.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from results_file import provenance, stamp, write_results  # benchmarks/ is the script's directory

ROOT = Path(__file__).resolve().parents[1]

WRITE_CHECKPOINT = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])  # the repository: tests/ is not installed
from moss_audio_edge.export.checkpoint_writer import PUBLISHED_4B_CONFIG
from tests.fixtures.checkpoints import write_random_checkpoint
write_random_checkpoint(Path(sys.argv[1]), PUBLISHED_4B_CONFIG, seed=0)
"""

EXPORT = """
import sys
from moss_audio_edge.export.bundle_export import export_bundle
export_bundle(sys.argv[1], sys.argv[2], llm_type=sys.argv[3])
"""


def run_step(code: str, *args: str) -> dict[str, float]:
    """Run `code` in a fresh interpreter; its wall time and peak RSS."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", code, *args])
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"step failed with status {status}: {code.strip().splitlines()[-1]}")
    return {"wall_s": round(time.perf_counter() - started, 1),
            "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2)}  # ru_maxrss is KiB on Linux


def directory_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--llm-type", default="F16", choices=["F16", "F32"])
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and bundle")
    args = parser.parse_args()
    checkpoint = args.work_dir / "moss-audio-4b-random"
    bundle = args.work_dir / f"moss-audio-4b-random-{args.llm_type.lower()}"
    for path in (checkpoint, bundle):
        if path.exists():
            raise SystemExit(f"{path} exists; remove it or choose another --work-dir")

    steps = {"write_checkpoint": run_step(WRITE_CHECKPOINT, str(checkpoint), str(ROOT))}
    steps["export"] = run_step(EXPORT, str(checkpoint), str(bundle), args.llm_type)
    manifest = json.loads((bundle / "manifest.json").read_text())
    result = {
        **stamp(f"python benchmarks/export_4b.py --work-dir {args.work_dir} --llm-type {args.llm_type}"),
        "steps": steps,
        "sizes_gib": {
            "checkpoint_bf16": round(directory_size(checkpoint) / 2**30, 2),
            "encoder_onnx_fp32": round(manifest["encoder"]["size"] / 2**30, 2),
            f"llm_gguf_{args.llm_type}": round(manifest["llm"]["size"] / 2**30, 2),
        },
        "encoder_parity": manifest["parity"],
    }
    rows = [f"| {name} | {s['wall_s']} | {s['peak_rss_gib']} |" for name, s in steps.items()]
    sizes = [f"| {name} | {size} |" for name, size in result["sizes_gib"].items()]
    write_results("export_4b", result, [
        "# Export at 4B scale (random weights, published MOSS-Audio-4B-Instruct config)", "",
        provenance(result), "",
        "| step | wall s | peak RSS GiB |", "|---|---|---|", *rows, "",
        "| file | GiB |", "|---|---|", *sizes, "",
        f"Encoder ONNX vs PyTorch rows, max relative error: "
        f"{manifest['parity']['encoder_rows_max_rel_error']:.2e}"])
    print(json.dumps(result, indent=2))
    if not args.keep:
        import shutil
        shutil.rmtree(checkpoint)
        shutil.rmtree(bundle)


if __name__ == "__main__":
    main()
