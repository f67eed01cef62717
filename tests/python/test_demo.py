"""`model-opt demo` at a small size: it trains resnet18 end to end on the planned arena, and its report is
consistent (arena >= lower bound, reordered live peak <= eager, losses equal to eager, no divergences).
Runs in a fresh interpreter because an installed CPU allocator cannot be removed from a process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

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
