"""`model-opt demo` at a small size: it trains resnet18 end to end on the planned arena, and its report is
consistent (arena >= lower bound, reordered live peak <= eager, losses equal to eager, no divergences).
Runs in a fresh interpreter because an installed CPU allocator cannot be removed from a process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

import model_opt

pytest.importorskip("torchvision")


def test_demo_small_resnet18_report_is_consistent(tmp_path: Path) -> None:
    report_path = tmp_path / "demo.json"
    proc = run_cli(
        "demo",
        "--batch-size", "2",
        "--image-size", "32",
        "--steps", "2",
        "--threads", "1",
        "--time-limit", "2",
        "--json", report_path,
        "--plot-dir", tmp_path / "plots",
        "--trace-dir", tmp_path / "trace",
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout.splitlines()[-1]
    assert "[demo" in proc.stderr  # progress lines
    r = json.loads(report_path.read_text())
    assert r["ok"] and r["problems"] == []
    assert r["model"] == "resnet18" and r["steps"] == 2
    assert r["arena_bytes"] >= r["plan_lower_bound_bytes"] > 0
    assert r["schedule_lower_bound_bytes"] <= r["reordered_live_peak_bytes"] <= r["eager_live_peak_bytes"]
    assert r["reordered_live_peak_bytes"] < r["eager_live_peak_bytes"]  # resnet18 does gain
    assert r["losses_match"] and r["losses"] == r["eager_losses"] and len(r["losses"]) == 4
    assert r["divergences"] == 0 and r["planned_hits"] > 0
    assert r["step_seconds_model_opt"] > 0 and r["step_seconds_default"] > 0 and r["step_seconds_eager"] > 0
    if r["caching_reserved_bytes"] is not None:  # when the caching-allocator model is built in
        assert r["caching_reserved_bytes"] >= r["plan_lower_bound_bytes"]
        assert "n/a" not in proc.stdout.split("PyTorch caching allocator")[1].splitlines()[0]
    for png in r["plots"]:
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(r["plots"]) == 2
    # The plan plotted is the plan served: its peak is the reported arena, byte for byte, and it is a
    # valid placement of the trace's buffers (one row each, slots of 512 bytes).
    served = tmp_path / "plots" / "plan.csv"
    rows = [line.split(",") for line in served.read_text().splitlines()[1:]]
    assert len(rows) == r["plan_buffers"]
    assert max(int(size) + int(offset) for _, _, _, size, offset in rows) == r["arena_bytes"]
    assert all(int(size) % 512 == 0 and int(offset) % 512 == 0 for _, _, _, size, offset in rows)
    assert model_opt.validate_csv(served)["peak_bytes"] == r["arena_bytes"]
    # PyTorch's memory visualizer reads it: one segment, the served arena.
    from model_opt.snapshot import build_snapshot

    snapshot = build_snapshot(tmp_path / "trace" / "resnet18_b2_trace.csv", served)
    assert [s["total_size"] for s in snapshot["segments"]] == [r["arena_bytes"]]
    # --trace-dir keeps the recorded trace: the step that was planned, readable by `model-opt plan`.
    trace = tmp_path / "trace" / "resnet18_b2_trace.csv"
    assert r["trace_csv"] == str(trace)
    assert sorted(p.name for p in trace.parent.iterdir()) == [trace.name, "resnet18_b2_trace.persistent.csv"]
    assert len(trace.read_text().splitlines()) == 1 + r["plan_buffers"]
    planned = model_opt.plan_csv(trace, method="greedy")
    assert planned["buffers"] == r["plan_buffers"]
    # The runtime rounds sizes to 512 bytes.
    assert planned["lower_bound_bytes"] <= r["plan_lower_bound_bytes"]
    caching = model_opt.caching_allocator_peak(str(trace))
    assert caching["peak_allocated_bytes"] == r["plan_lower_bound_bytes"]
    if r["caching_reserved_bytes"] is not None:
        assert caching["reserved_peak_bytes"] == r["caching_reserved_bytes"]


# Runs the demo's command line in-process with `model_opt.optimize` wrapped so that each reordered
# step returns its loss plus 1e-3: a real failed check (losses differ from eager), nothing else off.
FAILING_DEMO = """
import sys
import model_opt
from model_opt import cli

real_optimize = model_opt.optimize


class OffByALittle:
    def __init__(self, step):
        self.step = step

    def __getattr__(self, name):
        return getattr(self.step, name)

    def __call__(self, *args):
        return self.step(*args) + 1e-3


model_opt.optimize = lambda *a, **k: OffByALittle(real_optimize(*a, **k))
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_failed_check_exits_1_naming_it_on_stderr(tmp_path: Path) -> None:
    report_path = tmp_path / "demo.json"
    args = ["demo", "--batch-size", "2", "--image-size", "32", "--steps", "1", "--threads", "1"]
    args += ["--time-limit", "1", "--quiet", "--json", str(report_path)]
    proc = subprocess.run(
        [sys.executable, "-c", FAILING_DEMO, *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    r = json.loads(report_path.read_text())
    assert not r["ok"] and len(r["problems"]) == 1
    problem = r["problems"][0]
    assert problem.startswith("losses differ from eager: model_opt [")
    assert not r["losses_match"] and len(r["losses"]) == len(r["eager_losses"]) == 3
    assert all(abs(a - b - 1e-3) < 1e-5 for a, b in zip(r["losses"], r["eager_losses"]))
    # Everything else still passed: only the losses are reported.
    assert r["divergences"] == 0 and r["planned_hits"] > 0
    # --quiet: no progress lines; stderr is exactly the failed checks, one line each.
    assert proc.stderr == f"model-opt demo: {problem}\n"
    assert proc.stdout.splitlines()[-1] == f"FAILED: {problem}"
    assert "losses vs eager               DIFFER" in proc.stdout


def test_demo_rejects_an_unknown_model() -> None:
    proc = run_cli("demo", "--model", "no_such_net", "--quiet", timeout=120)
    assert proc.returncode == 2
    assert "unknown model 'no_such_net'" in proc.stderr


def test_demo_cuda_without_a_gpu_says_so() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = run_cli("demo", "--device", "cuda", "--quiet", timeout=120)
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr


def test_demo_model_with_dropout_matches_eager(tmp_path: Path) -> None:
    # squeezenet's classifier has dropout: each model_opt step must draw the same mask as its eager step.
    report_path = tmp_path / "demo.json"
    proc = run_cli(
        "demo", "--model", "squeezenet1_0", "--batch-size", "2", "--image-size", "64", "--steps", "1",
        "--threads", "1", "--time-limit", "2", "--quiet", "--json", report_path,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(report_path.read_text())
    assert r["losses_match"] and r["losses"] == r["eager_losses"] and len(set(r["losses"])) == 3
