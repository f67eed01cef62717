"""The caching allocator model from Python, and snapshots read back by PyTorch's own memory tooling."""

from __future__ import annotations

import base64
import csv
import json
import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import model_opt
from model_opt.snapshot import ARENA_BASE, build_snapshot, save_snapshot

pytest.importorskip("torch")
from torch.cuda import _memory_viz as viz  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TRACE = REPO / "benches" / "data" / "transformer_3x3_b8.csv"
MIB = 1 << 20


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _max_load(rows: list[dict[str, str]]) -> int:
    """The most bytes live at once, lifetimes half-open (frees first at equal times)."""
    events = sorted(
        [(int(r["lower"]), 1, int(r["size"])) for r in rows]
        + [(int(r["upper"]), 0, -int(r["size"])) for r in rows]
    )
    live = peak = 0
    for _, _, delta in events:
        live += delta
        peak = max(peak, live)
    return peak


def _replay_entries(snapshot: dict[str, Any]) -> tuple[int, int]:
    """(sum of allocated sizes, most bytes live at once) according to the snapshot's trace."""
    live = peak = total = 0
    sizes: dict[int, int] = {}
    for e in snapshot["device_traces"][0]:
        if e["action"] == "alloc":
            assert e["addr"] not in sizes, "two live allocations at one address"
            sizes[e["addr"]] = e["size"]
            total += e["size"]
            live += e["size"]
            peak = max(peak, live)
        elif e["action"] == "free_completed":
            live -= sizes.pop(e["addr"])
    assert not sizes and live == 0
    return total, peak


def _check_torch_reads(snapshot: dict[str, Any], path: Path) -> None:
    """Every tool of torch.cuda._memory_viz that works offline reads the snapshot."""
    with path.open("rb") as f:
        loaded = pickle.load(f)
    assert loaded == snapshot
    summary = viz.segsum(loaded)  # checks its own accounting: free + allocated == reserved
    assert f"segments: {len(snapshot['segments'])}" in summary
    text = viz.trace(loaded)
    assert text.count(" = cudaMalloc(") == len(snapshot["segments"])
    assert text.count("# free completed for ") == sum(
        e["action"] == "free_completed" for e in snapshot["device_traces"][0]
    )
    # The flamegraphs need flamegraph.pl (a download): check the folded lines they are built from.
    for folded in (viz.segments(loaded, format_flamegraph=str), viz.memory(loaded, format_flamegraph=str)):
        assert folded.strip() and all(line.startswith("stream_0;") for line in folded.splitlines())
    for html in (
        viz.trace_plot(loaded),
        viz.segment_plot(loaded),
        viz.trace_plot(loaded, plot_segments=True),
    ):
        # The page embeds the pickle the browser-side MemoryViz.js reads: it must be ours.
        files = json.loads(re.search(r"const local_files = (\[.*\])", html).group(1))  # type: ignore[union-attr]
        assert pickle.loads(base64.b64decode(files[0]["base64"])) == snapshot


def test_caching_allocator_peak_on_a_hand_worked_trace(tmp_path: Path) -> None:
    # a: 1000 B → 1024 in a 2 MiB small segment. b: 5 MiB → a 20 MiB segment, split (the 15 MiB
    # remainder is pooled). c: 16 MiB does not fit that 15 MiB block → its own 16 MiB segment. All three
    # are live when c arrives: reserved peaks at 38 MiB with 1024 + 21 MiB allocated.
    path = tmp_path / "t.csv"
    path.write_text(f"id,lower,upper,size\na,0,3,1000\nb,1,3,{5 * MIB}\nc,2,4,{16 * MIB}\n")
    r = model_opt.caching_allocator_peak(path)
    assert r["reserved_peak_bytes"] == 38 * MIB
    assert r["allocated_at_peak_bytes"] == 21 * MIB + 1024
    assert r["peak_allocated_bytes"] == 21 * MIB + 1024
    assert r["peak_requested_bytes"] == 21 * MIB + 1000
    assert r["fragmentation"] == pytest.approx((38 * MIB - 21 * MIB - 1024) / (38 * MIB))
    assert (r["segments"], r["small_segments"], r["large_segments"]) == (3, 1, 2)
    # A 12 MiB c instead fits b's free 15 MiB remainder (best fit, split: 3 MiB > 1 MiB stays free).
    path.write_text(f"id,lower,upper,size\na,0,3,1000\nb,1,3,{5 * MIB}\nc,2,4,{12 * MIB}\n")
    r = model_opt.caching_allocator_peak(path)
    assert (r["reserved_peak_bytes"], r["segments"]) == (22 * MIB, 2)


def test_caching_allocator_peak_bounds_a_real_trace() -> None:
    r = model_opt.caching_allocator_peak(TRACE)
    lower_bound = _max_load(_rows(TRACE))
    assert r["peak_requested_bytes"] == lower_bound
    assert r["reserved_peak_bytes"] >= r["peak_allocated_bytes"] >= lower_bound
    assert 0.0 <= r["fragmentation"] < 1.0
    assert r["buffers"] == r["allocations"] == len(_rows(TRACE))


def test_caching_allocator_peak_rejects_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("id,lower,upper,size\na,3,1,8\n")
    with pytest.raises(model_opt.InputError):
        model_opt.caching_allocator_peak(bad)


def test_planned_snapshot_is_read_by_torch(tmp_path: Path) -> None:
    plan = tmp_path / "plan.csv"
    report = model_opt.plan_csv(TRACE, output=plan, method="greedy", time_limit=5.0)
    out = save_snapshot(TRACE, tmp_path / "planned.pickle", plan_csv=plan)
    snapshot = build_snapshot(TRACE, plan)
    _check_torch_reads(snapshot, out)

    rows = _rows(TRACE)
    total, peak = _replay_entries(snapshot)
    assert total == sum(int(r["size"]) for r in rows)
    assert peak == _max_load(rows) == report["lower_bound_bytes"]
    # One segment, the arena, and every buffer at its planned offset.
    (segment,) = snapshot["segments"]
    assert (segment["address"], segment["total_size"]) == (ARENA_BASE, report["peak_bytes"])
    offsets = {r["id"]: int(r["offset"]) for r in _rows(plan)}
    for e in snapshot["device_traces"][0]:
        if e["action"] == "alloc":
            assert e["addr"] == ARENA_BASE + offsets[e["frames"][0]["name"]]
    assert f"total_reserved: {viz.Bytes(report['peak_bytes'])}" in viz.segsum(snapshot)


def test_caching_model_snapshot_is_read_by_torch(tmp_path: Path) -> None:
    out = save_snapshot(TRACE, tmp_path / "cached.pickle")
    snapshot = build_snapshot(TRACE)
    _check_torch_reads(snapshot, out)

    report = model_opt.caching_allocator_peak(TRACE)
    rows = _rows(TRACE)
    total, peak = _replay_entries(snapshot)
    assert total == sum(int(r["size"]) for r in rows)
    assert peak == report["peak_requested_bytes"] == _max_load(rows)
    assert len(snapshot["segments"]) == report["segments"]
    assert sum(s["total_size"] for s in snapshot["segments"]) == report["reserved_peak_bytes"]
    seg_allocs = [e for e in snapshot["device_traces"][0] if e["action"] == "segment_alloc"]
    assert sorted(e["size"] for e in seg_allocs) == sorted(s["total_size"] for s in snapshot["segments"])
    # At the end of the step everything is freed: each segment is one inactive block.
    for s in snapshot["segments"]:
        assert [b["state"] for b in s["blocks"]] == ["inactive"]
        assert s["segment_type"] == ("small" if s["total_size"] == 2 * MIB else "large")


def test_torch_memory_viz_command_line_opens_the_file(tmp_path: Path) -> None:
    path = save_snapshot(TRACE, tmp_path / "s.pickle")
    stats = subprocess.run(
        [sys.executable, "-m", "torch.cuda._memory_viz", "stats", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stats.returncode == 0, stats.stderr
    assert "total_reserved" in stats.stdout
    html = tmp_path / "trace.html"
    plot = subprocess.run(
        [sys.executable, "-m", "torch.cuda._memory_viz", "trace_plot", str(path), "-o", str(html)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plot.returncode == 0, plot.stderr
    assert html.stat().st_size > 0


def test_a_plan_missing_a_buffer_is_an_input_error(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("id,lower,upper,size\na,0,2,8\nb,1,3,8\n")
    plan = tmp_path / "p.csv"
    plan.write_text("id,lower,upper,size,offset\na,0,2,8,0\n")
    with pytest.raises(model_opt.InputError, match="not in the plan"):
        build_snapshot(trace, plan)
