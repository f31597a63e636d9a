"""`moss-edge bench` and benchmarks/bench_4b.py's smoke mode on the tiny bundles: the output's
structure and sanity (positive rates; in the benchmark, overhead ratios and limits that follow
from the measured numbers).
No timed assertions: these machines are shared."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, moss_edge

ROOT = Path(__file__).resolve().parents[1]


def positive(*values: float) -> bool:
    return all(isinstance(v, (int, float)) and v > 0 for v in values)


def check_llm(llm: dict) -> None:
    """Both drivers measured, and the overhead is the ratio of their rates."""
    for driver in ("runtime", "llama_cpp"):
        assert positive(llm[driver]["prefill_tok_s"], llm[driver]["decode_tok_s"])
    for phase in ("prefill", "decode"):
        ratio = llm["llama_cpp"][f"{phase}_tok_s"] / llm["runtime"][f"{phase}_tok_s"]
        assert llm["overhead"][phase] == pytest.approx(ratio, rel=0.01, abs=0.002)


def check_limits(limits: dict, costs: dict, machine: dict) -> None:
    assert positive(machine["bandwidth_gb_s"], machine["matmul_gflop_s"])
    assert costs["decode_bytes_per_token"] > costs["weight_bytes_read"] > 0
    assert limits["decode_tok_s"] == pytest.approx(machine["bandwidth_gb_s"] * 1e9 / costs["decode_bytes_per_token"],
                                                   rel=0.01)
    assert limits["prefill_tok_s"] == pytest.approx(machine["matmul_gflop_s"] * 1e9 / costs["prefill_flops_per_token"],
                                                    rel=0.01)


def check_end_to_end(e2e: dict, tokens_per_second: float) -> None:
    assert positive(e2e["audio_s"], e2e["rtf"], e2e["windows"])
    # the decode cap stands in for a transcript's length: about `tokens_per_second` of audio in all
    assert abs(e2e["decode_budget_per_window"] - tokens_per_second * e2e["audio_s"] / e2e["windows"]) <= 1
    assert sum(e2e["timings_s"].values()) <= e2e["rtf"] * e2e["audio_s"] + 0.05


def test_bench_cli_json(tiny_bundles, speech_wav: Path) -> None:
    result = moss_edge("bench", str(tiny_bundles["k1"]), "--audio", str(speech_wav), "--threads", "1",
                       "--runs", "1", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["threads"] == 1
    assert (report["encoder_type"], report["llm_type"]) == ("fp32", "F32")
    assert positive(report["encoder_ms_per_chunk"], report["peak_rss_gib"])
    assert positive(report["llm"]["prefill_tok_s"], report["llm"]["decode_tok_s"])
    check_end_to_end(report["end_to_end"], 6.5)
    assert 20 < report["end_to_end"]["audio_s"] < 28  # the whole of --audio was transcribed


def test_bench_cli_text_with_a_generated_clip(tiny_bundles) -> None:
    result = moss_edge("bench", str(tiny_bundles["k2"]), "--seconds", "5", "--threads", "1", "--runs", "1")
    assert result.returncode == 0, result.stderr
    for label in ("encoder", "LLM prefill", "LLM decode", "end to end", "peak memory"):
        assert any(line.startswith(label) for line in result.stdout.splitlines()), (label, result.stdout)
    assert "RTF" in result.stdout and "on 5.0 s" in result.stdout


def test_bench_cli_refuses_a_missing_bundle(tmp_path: Path) -> None:
    assert_one_line_error(moss_edge("bench", str(tmp_path / "nothing")), [str(tmp_path / "nothing")])


def test_benchmark_script_smoke_mode(tiny_bundles, tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_4b.py"), "--smoke", "--work-dir", str(tmp_path),
               "--results-dir", str(tmp_path), "--runs", "1", "--threads", "1",
               "--bundle", f"k1={tiny_bundles['k1']}", "--bundle", f"k2={tiny_bundles['k2']}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "bench_4b_smoke.json").read_text())
    assert result["smoke"] and result["machine"] and result["date"]
    assert result["command"].startswith("python benchmarks/bench_4b.py --smoke")
    assert set(result["bundles"]) == set(result["llm"]) == set(result["end_to_end"]) == {"k1", "k2"}
    assert set(result["streaming"]) == {"k1"}
    assert set(result["encoder_ms_per_chunk"]["1"]) == {"k1", "k2"}
    assert all(positive(ms) for ms in result["encoder_ms_per_chunk"]["1"].values())
    machine = result["machine_limits"]["1"]
    for llm in result["llm"].values():
        check_llm(llm)
        check_limits(llm["limits"], llm["costs"], machine)
    clip = result["clip"]
    assert clip["tokens_per_second"] == pytest.approx(clip["reference_tokens"] / clip["seconds"], rel=0.05)
    for e2e in result["end_to_end"].values():
        check_end_to_end(e2e, clip["tokens_per_second"])
        assert positive(e2e["peak_rss_gib"])
    stream = result["streaming"]["k1"]
    assert stream["utterances"] >= 1 and stream["latency_p50_s"] <= stream["latency_p95_s"]
    for target in result["estimates"].values():  # scaled from the measured numbers
        for name, estimate in target["variants"].items():
            measured = result["llm"][name]["runtime"]
            scaled = {"decode_tok_s": measured["decode_tok_s"] * target["bandwidth_ratio"],
                      "prefill_tok_s": measured["prefill_tok_s"] * target["compute_ratio"]}
            for key, value in scaled.items():
                assert estimate[key] == pytest.approx(value, rel=0.02)
            assert positive(estimate["decode_ceiling_tok_s"], estimate["rtf"])
    table = (tmp_path / "bench_4b_smoke.md").read_text()
    for heading in ("Machine limits", "Encoder", "LLM", "End to end", "Streaming", "Estimates"):
        assert f"## {heading}" in table
    legend = {line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| A |")}
    assert legend == {"A"} and result["command"] in table
    rows = [line for line in table.splitlines() if line.startswith(("| k1 |", "| k2 |"))]
    assert rows and all(line.rstrip().endswith("| A |") for line in rows)  # every row names its run


def test_parallel_windows_benchmark_runs_and_exact_arithmetic_gives_the_same_segments(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "benchmarks" / "parallel_windows.py"), "--seconds", "25",
               "--window-seconds", "8", "--parallel", "1,3", "--runs", "1", "--threads", "1",
               "--results-dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "parallel_windows.json").read_text())
    assert result["windows"] >= 3 and min(result["segments"].values()) >= 3  # nano writes real sentences
    exact = result["parallel"]["exact (f32 KV, no flash attention)"]
    assert exact["3"]["segments_differing_from_parallel_1"] == 0  # the batch's logits are one sequence's
    for rows in result["parallel"].values():
        assert rows["1"]["speedup"] == 1.0 and all(positive(row["rtf"]) for row in rows.values())
