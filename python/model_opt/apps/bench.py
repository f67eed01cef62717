"""The benchmark table over models x modes x batch sizes (as MODel's ``benchmarks.py``), with the arena.

Each row reuses `model_opt.apps.bench_reorder` for the capture and the schedule (simulated peaks in eager
and reordered order, the order lower bound, solve time). Where the step is small enough to run for real
cheaply (simulated eager peak at most ``trace_max_gb``), the reordered step also runs once on CPU under
model_opt's allocator in profile mode; the runtime plans the recorded step (``model_opt.plan``: the
plan it would serve, 512-byte slots), giving the arena and its lower bound, and, from the model of
PyTorch's caching allocator (``model_opt.caching_allocator_peak``), what that allocator would reserve
for the same trace and its fragmentation. Rows too large to run show "n/a" there.
"""

from __future__ import annotations

import csv
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from model_opt.apps import bench_reorder
from model_opt.apps.bench_reorder import GB, Row

#: Steps whose simulated eager peak is above this many GB are not run for real by default.
DEFAULT_TRACE_MAX_GB = 1.0


@dataclass
class BenchRow:
    """One benchmark row: the reordering row, then the measured trace's placement and the caching model."""

    reorder: Row
    #: Transient buffers of the recorded step (0 when no trace was recorded).
    trace_buffers: int = 0
    arena_gb: float | None = None
    trace_lower_bound_gb: float | None = None
    plan_method: str = ""
    plan_s: float = 0.0
    caching_reserved_gb: float | None = None
    caching_fragmentation: float | None = None
    run_s: float = 0.0
    #: Why no trace was recorded, or what failed while recording it.
    trace_note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def flat(self) -> dict[str, Any]:
        """The row as one flat dict (the CSV's columns)."""
        d = asdict(self.reorder)
        for key, value in asdict(self).items():
            if key not in ("reorder", "extra"):
                d[key] = value
        return d


HEADER = [
    *bench_reorder.HEADER[:-1],
    "trace buffers",
    "arena (GB)",
    "trace lower bound (GB)",
    "arena / bound",
    "caching reserved (GB)",
    "caching frag.",
    "caching / arena",
]


def _gb(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def markdown_row(r: BenchRow) -> str:
    """The row as a markdown table row (``HEADER``'s columns)."""
    base = bench_reorder.markdown_row(r.reorder).strip().strip("|").split(" | ")[:-1]
    base = [c.strip() for c in base]
    ratio = (
        f"{r.arena_gb / r.trace_lower_bound_gb:.4f}"
        if r.arena_gb is not None and r.trace_lower_bound_gb
        else "n/a"
    )
    caching_vs_arena = (
        f"{r.caching_reserved_gb / r.arena_gb:.2f}x"
        if r.caching_reserved_gb is not None and r.arena_gb
        else "n/a"
    )
    frag = "n/a" if r.caching_fragmentation is None else f"{100 * r.caching_fragmentation:.1f}%"
    cells = [
        *base,
        str(r.trace_buffers) if r.trace_buffers and not r.trace_note else (r.trace_note or "n/a"),
        _gb(r.arena_gb),
        _gb(r.trace_lower_bound_gb),
        ratio,
        _gb(r.caching_reserved_gb),
        frag,
        caching_vs_arena,
    ]
    return "| " + " | ".join(cells) + " |"


def markdown_table(rows: list[BenchRow]) -> str:
    """The whole table with a one-line summary below it."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += [markdown_row(r) for r in rows]
    summary = bench_reorder.markdown_table([r.reorder for r in rows]).split("\n")[-1]
    traced = [r for r in rows if r.arena_gb is not None]
    if summary.strip():
        lines += ["", summary]
    if traced:
        worst = max(r.arena_gb / r.trace_lower_bound_gb for r in traced if r.trace_lower_bound_gb)
        lines.append(f"{len(traced)} steps run for real: arena / trace lower bound at most {worst:.4f}.")
    return "\n".join(lines)


def write_csv(rows: list[BenchRow], path: Path) -> None:
    """Writes every row's flat dict as CSV."""
    flat = [r.flat() for r in rows]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(flat[0].keys()) if flat else ["model"])
        writer.writeheader()
        writer.writerows(flat)


def _record_trace(
    name: str, mode: str, batch: int, time_limit: float, row: BenchRow, method: str, folder: Path
) -> None:
    """Runs the reordered step once for real under model_opt's CPU allocator in profile mode, plans the
    recorded trace offline and fills the row's arena and caching-allocator columns."""

    import model_opt
    from model_opt.reorder import schedule_captured

    model_opt.install_cpu_allocator()
    captured, args, _ = bench_reorder.capture_with_inputs(name, mode, batch)
    gm, _ = schedule_captured(captured, method=method, time_limit=time_limit)
    started = time.perf_counter()
    with model_opt.profile():
        out = captured.run(gm, *args)
        del out
    row.run_s = time.perf_counter() - started
    trace, _ = model_opt.save_trace(folder / f"{name}_{mode}_b{batch}.csv")
    # The runtime's own plan of the step (512-byte slots, as it would serve them), not a re-plan of
    # the exported trace.
    placed = model_opt.plan(time_limit=time_limit)
    row.trace_buffers = int(placed["buffers"])
    row.arena_gb = int(placed["arena_bytes"]) / GB
    row.trace_lower_bound_gb = int(placed["lower_bound_bytes"]) / GB
    row.plan_method = str(placed["method"])
    row.plan_s = float(placed["seconds"])
    try:
        detail = model_opt.caching_allocator_peak(str(trace))
    except model_opt.ModelOptError as e:  # informative column: shown in the row, the arena stays
        row.trace_note = f"caching model error: {e}"[:120]
        return
    row.caching_reserved_gb = int(detail["reserved_peak_bytes"]) / GB
    row.caching_fragmentation = float(detail["fragmentation"])


def run_row(
    name: str,
    mode: str,
    batch: int,
    time_limit: float,
    method: str = "auto",
    trace_max_gb: float = DEFAULT_TRACE_MAX_GB,
    trace_dir: Path | None = None,
) -> BenchRow:
    """One configuration: the reordering row (`bench_reorder.run_one`), then, when the step's simulated
    eager peak is at most ``trace_max_gb``, the recorded trace's arena and the caching-allocator model.
    Errors are reported in the row, never raised."""
    row = BenchRow(bench_reorder.run_one(name, mode, batch, time_limit, method))
    if row.reorder.error:
        return row
    if row.reorder.eager_peak_gb > trace_max_gb:
        row.trace_note = f"skipped (> {trace_max_gb:g} GB)"
        return row
    try:
        with tempfile.TemporaryDirectory(prefix="model_opt_bench_") as tmp:
            folder = trace_dir or Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            _record_trace(name, mode, batch, time_limit, row, method, folder)
    except Exception as e:  # one failing row must not end the table
        row.trace_note = f"error: {type(e).__name__}: {e}"[:120]
    return row
