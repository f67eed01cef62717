"""`model-opt caching` and `model-opt snapshot` on a recorded trace, as a user runs them."""

from __future__ import annotations

import pickle
from pathlib import Path

from conftest import REPO, run_cli

TRACE = REPO / "benches" / "data" / "resnet18_b8_112px.csv"


def test_caching_reports_a_reservation_above_the_lower_bound() -> None:
    r = run_cli("caching", TRACE)
    assert r.returncode == 0, r.stderr
    fields = dict(kv.split("=", 1) for kv in r.stdout.split())
    assert int(fields["reserved_peak"]) >= int(fields["lower_bound"]) > 0
    assert 0.0 <= float(fields["fragmentation"]) < 1.0


def test_snapshot_of_a_plan_has_one_arena_segment(tmp_path: Path) -> None:
    plan = tmp_path / "plan.csv"
    assert run_cli("plan", TRACE, "--output", plan, "--method", "greedy").returncode == 0
    out = tmp_path / "snap.pickle"
    r = run_cli("snapshot", TRACE, "--plan", plan, "--output", out)
    assert r.returncode == 0, r.stderr
    snapshot = pickle.loads(out.read_bytes())
    assert len(snapshot["segments"]) == 1
    rows = plan.read_text().splitlines()[1:]
    peak = max(int(c[3]) + int(c[4]) for c in (row.split(",") for row in rows))
    assert snapshot["segments"][0]["total_size"] == peak


def test_bad_trace_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("id,lower,upper,size\na,3,1,5\n")
    for command in ("caching", "snapshot"):
        extra = ["--output", str(tmp_path / "x.pickle")] if command == "snapshot" else []
        r = run_cli(command, bad, *extra)
        assert r.returncode == 2, (command, r.stderr)
        assert "upper 1 must be greater than lower 3" in r.stderr
        assert "Traceback" not in r.stderr
