"""Exact placement from Python: `auto` is the default, statuses are backed by bounds, progress is reported."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli

import model_opt


def test_auto_is_the_default_and_reaches_c_optimum(minimalloc: Path) -> None:
    # The search closes C in 672 nodes (milliseconds), far inside every share of the time limit, so
    # the limit is only a guard: the result does not depend on the machine's speed or load (the
    # node-counted checks of the search are in tests/placement_exact.rs).
    seen: list[tuple[object, int, float, str]] = []
    report = model_opt.plan_csv(
        minimalloc / "challenging" / "C.1048576.csv",
        time_limit=20.0,
        progress=lambda inc, bound, elapsed, phase: seen.append((inc, bound, elapsed, phase)),
    )
    assert report["method"].startswith("auto/")
    assert report["peak_bytes"] == report["proven_bound_bytes"] == 1039360
    assert report["status"] == "optimal"
    assert seen and seen[-1][0] == 1039360
    assert all(isinstance(s[3], str) for s in seen)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_failing_progress_callback_does_not_stop_planning(minimalloc: Path) -> None:
    calls = []

    def boom(*args: object) -> None:
        calls.append(args)
        raise RuntimeError("callback failed")

    report = model_opt.plan_csv(minimalloc / "examples" / "input.12.csv", method="search", progress=boom)
    assert calls
    assert report["peak_bytes"] == 12


def test_cli_prints_progress_on_request_and_exits_1_on_a_capacity_timeout(minimalloc: Path) -> None:
    src = minimalloc / "challenging" / "D.1048576.csv"
    r = run_cli("plan", src, "--capacity", "1000000", "--time-limit", "0.5", "--progress")
    assert r.returncode == 1
    assert "incumbent=" in r.stderr and "bound=" in r.stderr
    assert "Traceback" not in r.stderr
