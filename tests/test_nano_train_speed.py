"""benchmarks/nano_train_speed.py: a tree is timed with its own trainer, or not at all."""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from nano_train_speed import PARTS, extract_commit, time_tree  # noqa: E402


def test_each_part_is_timed_with_the_trees_own_trainer(tmp_path: Path):
    args = argparse.Namespace(work_dir=tmp_path / "work", steps=1, threads=1)
    per_step = time_tree(extract_commit("HEAD", tmp_path / "tree"), args, data_seed=0)
    assert set(per_step) == set(PARTS) and all(seconds > 0 for seconds in per_step.values())


def test_a_tree_without_the_trainer_is_refused_not_timed_with_another(tmp_path: Path):
    tree = extract_commit("HEAD", tmp_path / "tree")
    shutil.rmtree(tree / "export")  # its imports now fall through to the installed package
    args = argparse.Namespace(work_dir=tmp_path / "work", steps=1, threads=1)
    with pytest.raises(RuntimeError, match="not the one in"):
        time_tree(tree, args, data_seed=0)
