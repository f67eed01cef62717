"""`model-opt caching` and `model-opt snapshot` on a recorded trace, as a user runs them."""

from __future__ import annotations

import pickle
import subprocess
from pathlib import Path

import pytest
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


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed command writes on stderr (and no traceback)."""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def _files(tmp_path: Path, trace: str, plan: str) -> tuple[Path, Path]:
    t, p = tmp_path / "trace.csv", tmp_path / "plan.csv"
    t.write_text(trace)
    p.write_text(plan)
    return t, p


def test_a_plan_of_other_lifetimes_is_refused(tmp_path: Path) -> None:
    # Valid for its own lifetimes (a and b never live together), but in the trace they do.
    trace, plan = _files(
        tmp_path,
        "id,lower,upper,size\na,0,3,8\nb,2,4,8\n",
        "id,lower,upper,size,offset\na,0,2,8,0\nb,2,4,8,0\n",
    )
    out = tmp_path / "snap.pickle"
    r = run_cli("snapshot", trace, "--plan", plan, "--output", out)
    assert r.returncode == 2
    assert one_error_line(r) == (
        f"model-opt snapshot: {plan}:2: buffer 'a' lives [0, 2) in the plan but [0, 3) in the trace "
        f"({trace}:2): the plan is not of this trace"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "plan,message",
    [
        (
            "id,lower,upper,size,offset\na,0,3,8,0\n",
            "{trace}:3: buffer 'b' of the trace is not in the plan {plan}",
        ),
        (
            "id,lower,upper,size,offset\na,0,3,8,0\nb,2,4,8,8\nc,0,1,1,0\n",
            "{plan}:4: buffer 'c' of the plan is not in the trace {trace}",
        ),
        (
            "id,lower,upper,size,offset\na,0,3,8,0\nb,2,4,16,8\n",
            "{plan}:3: buffer 'b' has size 16 in the plan but 8 in the trace ({trace}:3), nor its 512-byte "
            "slot: the plan is not of this trace",
        ),
        (
            "id,lower,upper,size,offset\na,0,3,8,0\nb,2,4,8,4\n",
            "{plan}: buffers a and b are live at the same time (in [2, 3)) and share bytes [4, 8)",
        ),
        ("id,lower,upper,size\na,0,3,8\nb,2,4,8\n", "{plan}: no offset column: not a plan"),
    ],
    ids=["missing", "extra", "size", "overlap", "no-offsets"],
)
def test_a_plan_that_does_not_match_the_trace_is_refused(tmp_path: Path, plan: str, message: str) -> None:
    trace_path, plan_path = _files(tmp_path, "id,lower,upper,size\na,0,3,8\nb,2,4,8\n", plan)
    r = run_cli("snapshot", trace_path, "--plan", plan_path, "--output", tmp_path / "x.pickle")
    assert r.returncode == 2
    assert one_error_line(r).startswith(
        "model-opt snapshot: " + message.format(trace=trace_path, plan=plan_path)
    ), r.stderr


def test_quoted_ids_match_across_trace_and_plan(tmp_path: Path) -> None:
    # The trace quotes its ids (one spans two lines); the plan written by `plan` is read the same way.
    trace = tmp_path / "trace.csv"
    trace.write_text('id,lower,upper,size\n"a",0,3,8\n\n"b\nc",2,4,8\n')
    plan = tmp_path / "plan.csv"
    assert run_cli("plan", trace, "--output", plan, "--method", "greedy").returncode == 0
    out = tmp_path / "snap.pickle"
    r = run_cli("snapshot", trace, "--plan", plan, "--output", out)
    assert r.returncode == 0, r.stderr
    entries = pickle.loads(out.read_bytes())["device_traces"][0]
    allocs = [(e["frames"][0]["name"], e["frames"][0]["line"]) for e in entries if e["action"] == "alloc"]
    assert allocs == [("a", 2), ("b\nc", 4)]
    r = run_cli("snapshot", trace, "--output", out)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "output,reason",
    [
        ("missing-dir/x.pickle", "No such file or directory"),
        (".", "Is a directory"),
        ("/dev/full", "No space left on device"),
    ],
)
def test_an_output_that_cannot_be_written_is_bad_input(tmp_path: Path, output: str, reason: str) -> None:
    out = output if output.startswith("/") else tmp_path / output
    if output.startswith("/") and not Path(output).exists():
        pytest.skip(f"no {output} here")
    plan = tmp_path / "plan.csv"
    assert run_cli("plan", TRACE, "--output", plan, "--method", "greedy").returncode == 0
    for extra in ([], ["--plan", str(plan)]):
        r = run_cli("snapshot", TRACE, *extra, "--output", out)
        assert r.returncode == 2
        assert one_error_line(r) == f"model-opt snapshot: {out}: cannot write: {reason}"


def test_an_unreadable_input_or_a_huge_id_is_bad_input(tmp_path: Path) -> None:
    r = run_cli("snapshot", tmp_path, "--output", tmp_path / "x.pickle")
    assert r.returncode == 2
    assert one_error_line(r).startswith(f"model-opt snapshot: {tmp_path}: cannot read: Is a directory")
    huge = tmp_path / "huge.csv"
    huge.write_text("id,lower,upper,size\n" + "x" * 2**20 + ",0,1,8\n")
    for command in ("snapshot", "caching", "plan"):
        extra = ["--output", str(tmp_path / "x.pickle")] if command == "snapshot" else []
        r = run_cli(command, huge, *extra)
        assert r.returncode == 2
        assert one_error_line(r) == (
            f"model-opt {command}: {huge}:2: id '{'x' * 40}...' is 1048576 bytes long (at most 1024)"
        )


def test_snapshot_without_a_plan_puts_buffers_where_the_caching_allocator_would(tmp_path: Path) -> None:
    # a: 3 MiB in [0, 2); c: 100 KiB in [0, 4); b: 3 MiB in [2, 4). PyTorch's policy: a gets a
    # 20 MiB large segment, c a 2 MiB small one, and b reuses a's block once a is freed.
    mib = 2**20
    trace = tmp_path / "trace.csv"
    trace.write_text(f"id,lower,upper,size\na,0,2,{3 * mib}\nc,0,4,{100 * 1024}\nb,2,4,{3 * mib}\n")
    out = tmp_path / "snap.pickle"
    r = run_cli("snapshot", trace, "--output", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{out}\n"
    snapshot = pickle.loads(out.read_bytes())
    segments = snapshot["segments"]
    assert [(s["total_size"], s["segment_type"]) for s in segments] == [
        (20 * mib, "large"),
        (2 * mib, "small"),
    ]
    large, small = (s["address"] for s in segments)
    events = [(e["action"], e["addr"], e["size"], e["frames"][0]["name"] if e["frames"] else None)
              for e in snapshot["device_traces"][0]]  # fmt: skip
    assert events == [
        ("segment_alloc", large, 20 * mib, None),
        ("alloc", large, 3 * mib, "a"),
        ("segment_alloc", small, 2 * mib, None),
        ("alloc", small, 100 * 1024, "c"),
        ("free_requested", large, 3 * mib, "a"),
        ("free_completed", large, 3 * mib, "a"),
        ("alloc", large, 3 * mib, "b"),
        ("free_requested", small, 100 * 1024, "c"),
        ("free_completed", small, 100 * 1024, "c"),
        ("free_requested", large, 3 * mib, "b"),
        ("free_completed", large, 3 * mib, "b"),
    ]
    # The same reservation as `model-opt caching` reports for the trace.
    c = run_cli("caching", trace)
    assert c.returncode == 0, c.stderr
    fields = dict(kv.split("=", 1) for kv in c.stdout.split())
    assert int(fields["reserved_peak"]) == sum(s["total_size"] for s in segments) == 22 * mib
    assert int(fields["segments"]) == len(segments)
