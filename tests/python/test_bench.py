"""`model-opt bench` writes its CSV and markdown table; rows small enough to run get the recorded trace's
arena (>= its lower bound) and the caching-allocator model's reservation. Runs in a fresh interpreter
(it installs the CPU allocator)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torchvision")


def test_bench_writes_csv_and_markdown_with_arena_columns(tmp_path: Path) -> None:
    out = tmp_path / "results"
    args = ["bench", "--model", "alexnet", "--mode", "train", "eval", "--batch-size", "1"]
    args += ["--time-limit", "1", "--output-dir", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "model_opt.cli", *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = list(csv.DictReader((out / "bench.csv").open()))
    assert [(r["model"], r["mode"], r["batch"]) for r in rows] == [
        ("alexnet", "train", "1"),
        ("alexnet", "eval", "1"),
    ]
    for r in rows:
        assert not r["error"] and not r["trace_note"]
        assert float(r["peak_gb"]) <= float(r["eager_peak_gb"])
        assert int(r["trace_buffers"]) > 0
        assert float(r["arena_gb"]) >= float(r["trace_lower_bound_gb"]) > 0
        assert float(r["caching_reserved_gb"]) > 0 and float(r["caching_fragmentation"]) >= 0
    table = (out / "bench.md").read_text()
    assert "| arena (GB) |" in table and "| alexnet | train | 1 |" in table
    assert "caching / arena" in table


def test_bench_skips_the_trace_above_the_threshold_and_rejects_unknown_models(tmp_path: Path) -> None:
    from conftest import run_cli

    proc = run_cli("bench", "--model", "alexnet", "--mode", "eval", "--batch-size", "1", "--time-limit", "1",
                   "--trace-max-gb", "0", "--output-dir", tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    row = next(csv.DictReader((tmp_path / "bench.csv").open()))
    assert row["trace_note"].startswith("skipped") and row["arena_gb"] == ""
    proc = run_cli("bench", "--model", "nonet", "--output-dir", tmp_path)
    assert proc.returncode == 2 and "unknown model" in proc.stderr
