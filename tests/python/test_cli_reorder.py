"""`model-opt bench-reorder` at the smallest size: the table it prints, the CSV and markdown it writes,
and a bad model name. Capture runs under fake tensors, so alexnet at batch 1 costs seconds."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import run_cli

pytest.importorskip("torchvision")


def test_bench_reorder_prints_and_writes_one_row_per_configuration(tmp_path: Path) -> None:
    out_csv, out_md = tmp_path / "rows.csv", tmp_path / "table.md"
    r = run_cli(
        "bench-reorder", "--model", "alexnet", "--mode", "train", "eval", "--batch-size", "1",
        "--time-limit", "0.5", "--csv", out_csv, "--markdown", out_md,
        timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out_csv.open()))
    assert [(row["model"], row["mode"], row["batch"]) for row in rows] == [
        ("alexnet", "train", "1"),
        ("alexnet", "eval", "1"),
    ]
    for row in rows:
        assert row["error"] == "", row
        eager, peak, bound = (float(row[k]) for k in ("eager_peak_gb", "peak_gb", "lower_bound_gb"))
        assert eager >= peak >= bound > 0
        assert float(row["saved_pct"]) == pytest.approx(100 * (eager - peak) / eager)
        assert int(row["ops"]) > 0 and float(row["capture_s"]) > 0
        assert row["status"] in ("optimal", "feasible", "time_limit")
        assert float(row["measured_eager_gb"]) == float(row["measured_peak_gb"]) == 0.0  # no --measure
    train, infer = rows
    # Training has a backward pass to reorder: alexnet's greedy order meets the lower bound (19% less
    # than eager). Inference is a chain: nothing to reorder, and the eager order is optimal.
    assert float(train["peak_gb"]) < float(train["eager_peak_gb"])
    assert float(train["peak_gb"]) == float(train["lower_bound_gb"]) and train["status"] == "optimal"
    assert infer["peak_gb"] == infer["eager_peak_gb"] and infer["status"] == "optimal"
    assert int(train["ops"]) > int(infer["ops"])
    # stdout: the markdown table as it goes, then the summary line; the file holds the same table.
    lines = r.stdout.splitlines()
    assert lines[0].startswith("| model | mode | batch | ops | eager peak (GB) |")
    assert lines[2].startswith("| alexnet | train | 1 | ") and lines[3].startswith("| alexnet | eval | 1 | ")
    assert lines[4].startswith("2 configurations: mean saving ") and len(lines) == 5
    assert out_md.read_text() == "\n".join(lines[:4] + ["", lines[4]]) + "\n"


def test_bench_reorder_rejects_an_unknown_model(tmp_path: Path) -> None:
    r = run_cli("bench-reorder", "--model", "nonet", "--csv", tmp_path / "x.csv", timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("model-opt bench-reorder: unknown model(s) ['nonet']; use ['alexnet', ")
    assert r.stderr.rstrip().endswith("or 'all'") and "Traceback" not in r.stderr
    assert r.stdout == "" and not (tmp_path / "x.csv").exists()
