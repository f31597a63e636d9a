"""What the nano training recipe costs on this machine: seconds per step in each part of it,
and the whole recipe's time estimated from them.

Three kinds of step, each timed through `Trainer.train` (the next batch composed beside the
step, as in a real run; each timing starts with one batch composed alone and ends with one
state saved): an encoder-phase step (16 single-chunk clips, CTC only), a joint step at the
start of the joint phase (12 clips of <= 4 s) and one at full length (12 clips of <= 20 s, the
last 60% of the joint phase). The clips grow linearly in between, so the estimate takes the
mean of the two joint figures for the growing 40%.

    python benchmarks/nano_train_speed.py [--work-dir /tmp/nano-speed] [--steps 20] [--repeats 3]

Writes benchmarks/results/nano_train_speed.{json,md}. Needs espeak-ng and the export extra;
the first run synthesises a small speech bank into --work-dir (kept for later runs).
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import torch

from edge_runtime.bench import machine_name
from export.nano.train import LENGTH_RAMP_SHARE, Trainer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PHASE_STEPS = 10**6  # long phases, so that a step number picks its part of the schedule
PARTS = {  # part -> a step in it
    "encoder": PHASE_STEPS // 2,
    "joint, 4 s clips": PHASE_STEPS,
    "joint, 20 s clips": PHASE_STEPS + PHASE_STEPS // 2,
}


def seconds_per_step(trainer: Trainer, first: int, steps: int) -> float:
    trainer.step = first
    started = time.perf_counter()
    trainer.train(log_every=steps, save_every=steps, stop_after=first + steps)
    return (time.perf_counter() - started) / steps


def recipe_seconds(per_step: dict[str, float], encoder_steps: int, joint_steps: int) -> float:
    growing = LENGTH_RAMP_SHARE * joint_steps * (per_step["joint, 4 s clips"] + per_step["joint, 20 s clips"]) / 2
    full_length = (1 - LENGTH_RAMP_SHARE) * joint_steps * per_step["joint, 20 s clips"]
    return encoder_steps * per_step["encoder"] + growing + full_length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/nano-speed"))
    parser.add_argument("--steps", type=int, default=20, help="training steps per timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--encoder-steps", type=int, default=7500, help="the recipe to estimate")
    parser.add_argument("--joint-steps", type=int, default=7500)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    trainer = Trainer(args.work_dir, seed=0, batch_size=12, steps=PHASE_STEPS, lr=1e-3, encoder_steps=PHASE_STEPS)
    trainer.load_or_build_bank(30, 8, 0)
    timings: dict[str, list[float]] = {part: [] for part in PARTS}
    for repeat in range(args.repeats):
        for part, first in PARTS.items():
            timings[part].append(seconds_per_step(trainer, first, args.steps))
        print(json.dumps({"repeat": repeat, **{p: round(t[-1], 3) for p, t in timings.items()}}), flush=True)
    per_step = {part: statistics.median(t) for part, t in timings.items()}
    estimate = recipe_seconds(per_step, args.encoder_steps, args.joint_steps)
    result = {
        "machine": machine_name(),
        "date": datetime.date.today().isoformat(),
        "command": f"python benchmarks/nano_train_speed.py --steps {args.steps} --repeats {args.repeats} "
                   f"--threads {args.threads} --encoder-steps {args.encoder_steps} --joint-steps {args.joint_steps}",
        "seconds_per_step": per_step, "timings": timings,
        "recipe": {"encoder_steps": args.encoder_steps, "joint_steps": args.joint_steps},
        "estimated_recipe_minutes": estimate / 60,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "nano_train_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Nano training: what a step costs here", "",
             f"Machine: {result['machine']}. Date: {result['date']}. Command: `{result['command']}`.", "",
             f"Seconds per step through `Trainer.train`; median of {args.repeats} timings of {args.steps} steps.", "",
             "| part of the recipe | s/step |", "|---|---|"]
    lines += [f"| {part} | {seconds:.2f} |" for part, seconds in per_step.items()]
    lines += ["", f"Estimated time of the recipe ({args.encoder_steps} encoder + {args.joint_steps} joint steps): "
              f"{estimate / 60:.0f} minutes.", ""]
    (RESULTS / "nano_train_speed.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
