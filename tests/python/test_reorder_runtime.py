"""The reordered step composes with the allocator runtime: profiled, planned and replayed from one arena
like any step, with the same results, and its arena is smaller than the eager order's. Each order runs in
a fresh interpreter (`served_step_worker.py`) because an installed CPU allocator cannot be removed from
a process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torchvision")


def _served(method: str) -> dict[str, Any]:
    spec = {"batch": 2, "image": 32, "momentum": 0.9, "optimize": {"method": method, "time_limit": 2.0}}
    worker = Path(__file__).parent / "served_step_worker.py"
    proc = subprocess.run(
        [sys.executable, str(worker), json.dumps(spec)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_reordered_step_runs_on_the_planned_arena_with_a_smaller_arena() -> None:
    eager, auto = _served("eager"), _served("auto")
    assert auto["losses"] == eager["losses"]  # SGD: the reordered step is bit-identical
    assert auto["params"] == eager["params"]
    assert eager["divergences"] == 0 and auto["divergences"] == 0
    assert auto["simulated_peak"] < eager["simulated_peak"]
    assert auto["arena"] < eager["arena"]
