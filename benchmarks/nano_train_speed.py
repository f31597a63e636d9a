"""What the nano training recipe costs on this machine: seconds per step in each part of it,
and the whole recipe's time estimated from them.

Three kinds of step, each timed through `Trainer.train` (each timing ends with one state
saved): an encoder-phase step (16 single-chunk clips, CTC only), a joint step at the start of
the joint phase (12 clips of <= 4 s) and one at full length (12 clips of <= 20 s, the last 60%
of the joint phase). The clips grow linearly in between, so the estimate takes the mean of the
two joint figures for the growing 40%.

With `--baseline REV`, every repeat also times the trainer of git commit REV (extracted into a
temporary directory) on the same batches, right after this tree's: the ratio says what the
changes since REV buy, measured in one run on one machine. Each timing runs in a fresh process
whose imports come from the tree it times.

    python benchmarks/nano_train_speed.py [--work-dir /tmp/nano-speed] [--steps 20] [--repeats 5] [--baseline REV]

Writes benchmarks/results/nano_train_speed.{json,md}. Needs espeak-ng and the export extra;
the first timing synthesises a small speech bank into --work-dir (kept for later ones).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from results_file import provenance, stamp, write_results  # benchmarks/ is the script's directory

ROOT = Path(__file__).resolve().parents[1]
PHASE_STEPS = 10**6  # long phases, so that a step number picks its part of the schedule
PARTS = {  # part -> a step in it
    "encoder": PHASE_STEPS // 2,
    "joint, 4 s clips": PHASE_STEPS,
    "joint, 20 s clips": PHASE_STEPS + PHASE_STEPS // 2,
}


def extract_commit(revision: str, into: Path) -> Path:
    """The files of git commit `revision` of this repository, written under `into`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], check=True, capture_output=True).stdout
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def tree_trainer(tree: Path) -> type:
    """The nano Trainer class of `tree`. Its export/ folder is bound to the name
    moss_audio_edge.export before anything imports that name, as the installed package would
    otherwise answer for it (trees from before the rename import it as `export`, but only
    relatively inside). A tree without the folder falls through to the installed package."""
    init = tree / "export" / "__init__.py"
    if init.is_file():
        spec = importlib.util.spec_from_file_location("moss_audio_edge.export", init,
                                                      submodule_search_locations=[str(init.parent)])
        sys.modules[spec.name] = package = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(package)
    return importlib.import_module("moss_audio_edge.export.nano.train").Trainer


def time_parts(trainer_class: type, work_dir: Path, steps: int, data_seed: int) -> dict[str, float]:
    """Seconds per step of each part: `steps` steps from its first, on the batches a generator
    seeded with `data_seed` draws."""
    trainer = trainer_class(work_dir, seed=0, batch_size=12, steps=PHASE_STEPS, lr=1e-3, encoder_steps=PHASE_STEPS)
    trainer.load_or_build_bank(30, 8, 0)
    per_step = {}
    for part, first in PARTS.items():
        trainer.rng, trainer.step = np.random.default_rng(data_seed), first
        started = time.perf_counter()
        trainer.train(log_every=steps, save_every=steps, stop_after=first + steps)
        per_step[part] = (time.perf_counter() - started) / steps
    return per_step


def time_tree(tree: Path, args: argparse.Namespace, data_seed: int) -> dict[str, float]:
    """time_parts in a fresh process that imports the trainer from `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, __file__, "--worker", str(data_seed), "--work-dir", str(args.work_dir),
               "--steps", str(args.steps), "--threads", str(args.threads)]
    out = subprocess.run(command, env=env, cwd=tree, check=True, capture_output=True, text=True).stdout
    report = json.loads(out.splitlines()[-1])
    if not Path(report["trainer"]).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"timed the trainer in {report['trainer']}, not the one in {tree}")
    return report["seconds_per_step"]


def recipe_seconds(per_step: dict[str, float], encoder_steps: int, joint_steps: int) -> float:
    # imported here, not at the top: a worker binds that name to the tree it times first
    from moss_audio_edge.export.nano.train import LENGTH_RAMP_SHARE
    growing = LENGTH_RAMP_SHARE * joint_steps * (per_step["joint, 4 s clips"] + per_step["joint, 20 s clips"]) / 2
    full_length = (1 - LENGTH_RAMP_SHARE) * joint_steps * per_step["joint, 20 s clips"]
    return encoder_steps * per_step["encoder"] + growing + full_length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/nano-speed"))
    parser.add_argument("--steps", type=int, default=20, help="training steps per timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--encoder-steps", type=int, default=5000, help="the recipe to estimate")
    parser.add_argument("--joint-steps", type=int, default=7500)
    parser.add_argument("--baseline", help="a git commit whose trainer to time beside this tree's")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # one timing, with this data seed
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker is not None:
        trainer_class = tree_trainer(Path.cwd())  # time_tree runs the worker in its tree
        report = {"trainer": sys.modules[trainer_class.__module__].__file__,
                  "seconds_per_step": time_parts(trainer_class, args.work_dir, args.steps, args.worker)}
        print(json.dumps(report))
        return
    with tempfile.TemporaryDirectory() as scratch:
        trees = {"this tree": ROOT}
        if args.baseline:
            trees[f"baseline {args.baseline}"] = extract_commit(args.baseline, Path(scratch))
        timings = {name: {part: [] for part in PARTS} for name in trees}
        for repeat in range(args.repeats):
            for name, tree in trees.items():
                for part, seconds in time_tree(tree, args, data_seed=repeat).items():
                    timings[name][part].append(seconds)
                print(json.dumps({"repeat": repeat, "tree": name, **{p: round(t[-1], 3) for p, t in timings[name].items()}}),
                      flush=True)
    per_step = {name: {part: statistics.median(t) for part, t in timings[name].items()} for name in trees}
    estimate = {name: recipe_seconds(per_step[name], args.encoder_steps, args.joint_steps) / 60 for name in trees}
    result = {
        **stamp(f"python benchmarks/nano_train_speed.py --steps {args.steps} --repeats {args.repeats} "
                f"--threads {args.threads} --encoder-steps {args.encoder_steps} --joint-steps {args.joint_steps}"
                + (f" --baseline {args.baseline}" if args.baseline else "")),
        "seconds_per_step": per_step, "timings": timings,
        "recipe": {"encoder_steps": args.encoder_steps, "joint_steps": args.joint_steps},
        "estimated_recipe_minutes": estimate,
    }
    names = list(trees)
    lines = ["# Nano training: what a step costs here", "",
             provenance(result), "",
             f"Seconds per step through `Trainer.train`: median (min-max) of {args.repeats} timings of {args.steps} "
             "steps, each tree's timings of a repeat on the same batches.", "",
             "| part of the recipe | " + " | ".join(names) + (" | ratio |" if len(names) > 1 else " |"),
             "|---|" + "---|" * (len(names) + (len(names) > 1))]
    for part in PARTS:
        cells = [f"{per_step[n][part]:.2f} ({min(timings[n][part]):.2f}-{max(timings[n][part]):.2f})" for n in names]
        if len(names) > 1:
            cells.append(f"{per_step[names[0]][part] / per_step[names[1]][part]:.2f}")
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    lines += ["", f"Estimated time of the recipe ({args.encoder_steps} encoder + {args.joint_steps} joint steps): "
              + "; ".join(f"{n}, {estimate[n]:.0f} minutes" for n in names) + "."]
    write_results("nano_train_speed", result, lines)


if __name__ == "__main__":
    main()
