"""Plots of plans and live bytes, written as PNG files with matplotlib (Agg backend, no display needed).

* `plot_plan` draws a placement solution (MiniMalloc CSV with an ``offset`` column, as written by
  ``model-opt plan --output`` or ``model_opt.plan_csv(..., output=...)``): time on x, address on y,
  one rectangle per buffer, the lower bound and the peak as horizontal lines.
* `plot_live_bytes` draws live bytes over a step: any number of named curves (e.g. the eager order and
  the reordered order of a captured step, from `live_bytes_of_step`) and horizontal reference lines
  (e.g. the arena).

matplotlib is imported lazily: ``import model_opt`` does not need it. Files are read with the
project's one CSV reader (`model_opt._native.read_csv`, the one ``model-opt plan`` uses); bad input
raises `model_opt.InputError` naming the file and line. A plot's memory grows with the number of
buffers, never with the length of the step in time units.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from model_opt import _native
from model_opt._native import InputError

MIB = 2**20
GIB = 2**30


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("model_opt's plots need matplotlib: pip install matplotlib") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_buffers(path: str | os.PathLike[str]) -> list[tuple[str, int, int, int, int | None]]:
    """The buffers of a MiniMalloc CSV file as ``(id, lower, upper, size, offset or None)``.

    Raises:
        model_opt.InputError: the file cannot be read or is malformed (the message names its line).
    """
    rows = _native.read_csv(path)
    offsets = rows["offset"] or [None] * len(rows["ids"])
    return list(zip(rows["ids"], rows["lower"], rows["upper"], rows["size"], offsets))


def _buffers_to_plot(path: str | os.PathLike[str]) -> list[tuple[str, int, int, int, int | None]]:
    buffers = read_buffers(path)
    if not buffers:
        raise InputError(f"{path}: no buffers to plot (the file has a header and no rows)")
    return buffers


def _save(fig: Any, plt: Any, path: str | os.PathLike[str]) -> Path:
    """Writes the figure as a PNG and closes it; an unwritable path is an `InputError`."""
    out = Path(path)
    try:
        fig.savefig(out, format="png")
    except OSError as e:
        raise InputError(f"{out}: cannot write: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return out


def live_bytes_of_buffers(
    buffers: Sequence[tuple[str, int, int, int, int | None]],
) -> tuple[list[int], list[int]]:
    """Live bytes over time of buffers with half-open lifetimes ``[lower, upper)``: the times where the
    load changes and the load from each of them on (a step function)."""
    deltas: dict[int, int] = {}
    for _, lo, hi, size, _ in buffers:
        deltas[lo] = deltas.get(lo, 0) + size
        deltas[hi] = deltas.get(hi, 0) - size
    times, loads, load = [], [], 0
    for t in sorted(deltas):
        load += deltas[t]
        times.append(t)
        loads.append(load)
    return times, loads


def plot_plan(
    solution_csv: str | os.PathLike[str], path: str | os.PathLike[str], title: str | None = None
) -> Path:
    """Draws a placement solution as a PNG: address (MiB) against time, one rectangle per buffer.

    Args:
        solution_csv: MiniMalloc CSV with an ``offset`` column (a solution).
        path: the PNG to write.
        title: the plot title (default: the file name, buffer count, peak and lower bound).

    Returns:
        The path written.

    Raises:
        model_opt.InputError: the file is malformed, has no buffers or no offset column, or the PNG
            cannot be written.
    """
    plt = _pyplot()
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    buffers = _buffers_to_plot(solution_csv)
    if any(b[4] is None for b in buffers):
        raise InputError(f"{solution_csv}: not a solution (no offset column); plan it first")
    # As the validator counts it: a buffer of 0 bytes holds no byte and does not raise the peak.
    peak = max((b[4] + b[3] for b in buffers if b[4] is not None and b[3] > 0), default=0)
    _, loads = live_bytes_of_buffers(buffers)
    bound = max(loads, default=0)
    t_end = max((b[2] for b in buffers), default=1)
    fig, ax = plt.subplots(figsize=(11, 6), dpi=110)
    cmap = plt.get_cmap("tab20")
    # Buffers that live one event would be a hairline on a long step: draw them at least ~3 px wide.
    min_width = t_end / 400
    rects = [
        Rectangle((lo, (off or 0) / MIB), max(hi - lo, min_width), size / MIB)
        for (_, lo, hi, size, off) in buffers
    ]
    colors = [cmap(i % 20) for i in range(len(rects))]
    edge = "black" if len(rects) <= 300 else "none"
    ax.add_collection(PatchCollection(rects, facecolor=colors, edgecolor=edge, linewidth=0.2))
    ax.axhline(peak / MIB, color="crimson", linewidth=1.2, label=f"peak {peak / MIB:.2f} MiB")
    ax.axhline(
        bound / MIB, color="black", linestyle="--", linewidth=1.0, label=f"lower bound {bound / MIB:.2f} MiB"
    )
    ax.set_xlim(0, t_end)
    ax.set_ylim(0, max(peak, 1) / MIB * 1.18)  # room for the legend above the plan
    ax.set_xlabel("time (event index)")
    ax.set_ylabel("address (MiB)")
    ratio = peak / bound if bound else 1.0
    ax.set_title(
        title or f"{Path(solution_csv).name}: {len(buffers)} buffers, peak / lower bound = {ratio:.4f}"
    )
    ax.legend(loc="upper right")
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_live_bytes(
    curves: Mapping[str, Sequence[int]],
    path: str | os.PathLike[str],
    lines: Mapping[str, int] | None = None,
    title: str = "live bytes over the step",
    xlabel: str = "operator (position in the order)",
) -> Path:
    """Draws live bytes over a step as a PNG: one step curve per entry of ``curves`` (bytes at each
    position, e.g. the eager and the reordered order from `live_bytes_of_step`) and one horizontal line
    per entry of ``lines`` (e.g. ``{"resident + arena": n}``).

    Returns:
        The path written.

    Raises:
        model_opt.InputError: the PNG cannot be written.
    """
    steps = {name: (range(len(values)), list(values)) for name, values in curves.items()}
    return _plot_steps(steps, path, lines, title, xlabel)


def _plot_steps(
    curves: Mapping[str, tuple[Sequence[int], Sequence[int]]],
    path: str | os.PathLike[str],
    lines: Mapping[str, int] | None,
    title: str,
    xlabel: str,
) -> Path:
    """Draws step curves given as ``(times, values)``: ``values[i]`` holds from ``times[i]`` to the
    next time. One point per change, so the plot costs what the curve has points, not its length."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 5), dpi=110)
    for name, (times, values) in curves.items():
        peak = max(values, default=0)
        ax.step(
            list(times),
            [v / MIB for v in values],
            where="post",
            linewidth=1.2,
            label=f"{name} (peak {peak / MIB:.2f} MiB)",
        )
    styles = ["--", ":", "-."]
    for i, (name, value) in enumerate((lines or {}).items()):
        ax.axhline(
            value / MIB,
            linestyle=styles[i % len(styles)],
            color="black",
            linewidth=1.0,
            label=f"{name} {value / MIB:.2f} MiB",
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("live bytes (MiB)")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, plt, path)


def live_bytes_of_step(step: Any) -> dict[str, list[int]]:
    """Simulated live bytes (resident state included) after each operator of a `ReorderedStep` (from
    ``model_opt.optimize``), in the captured eager order and in the reordered order."""
    from model_opt._native import simulate_order

    num_ops, tensors, edges, resident = step.captured.dataflow.native_args()
    # The optimizer's state lives outside the graph (see `OptimizedStep.report`): resident in both.
    resident += int(step.report.get("optimizer_state_bytes", 0))
    eager = list(simulate_order(num_ops, tensors, edges, list(range(num_ops)), resident))
    reordered = list(simulate_order(num_ops, tensors, edges, list(step.report["order"]), resident))
    return {"eager order": eager, "reordered": reordered}


def plot_trace_live_bytes(
    trace_csv: str | os.PathLike[str], path: str | os.PathLike[str], arena_bytes: int | None = None
) -> Path:
    """Draws the live bytes of a recorded trace (``model_opt.save_trace``) over event time, with the
    arena as a line when given (or the peak of the trace's own offsets when it is a solution).

    The curve is a step function with one point where each buffer starts or ends, however long
    the trace is in time units.

    Raises:
        model_opt.InputError: the file is malformed or has no buffers, or the PNG cannot be written.
    """
    buffers = _buffers_to_plot(trace_csv)
    times, loads = live_bytes_of_buffers(buffers)
    lines: dict[str, int] = {}
    if arena_bytes is not None:
        lines["arena"] = arena_bytes
    elif buffers and all(b[4] is not None for b in buffers):
        lines["plan peak"] = max((b[4] + b[3] for b in buffers if b[4] is not None and b[3] > 0), default=0)
    return _plot_steps(
        {"live (trace)": (times, loads)},
        path,
        lines,
        title=f"{Path(trace_csv).name}: live bytes",
        xlabel="time (event index)",
    )


def plot_fit(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Draws a `model_opt.fit` report as a PNG: the memory each way needs against the size (log-log),
    every size estimated, with the budget as a line and each way's largest size marked.

    Raises:
        model_opt.InputError: the PNG cannot be written.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    evaluations = sorted(report["evaluations"], key=lambda e: e["size"])
    sizes = [e["size"] for e in evaluations]
    from model_opt.reports import FIT_WAYS

    for way, label in FIT_WAYS.items():
        if way not in report["largest"]:
            continue  # remat, when not asked for
        largest = report["largest"][way]
        ax.plot(
            sizes,
            [e[f"{way}_bytes"] / GIB for e in evaluations],
            marker="o",
            markersize=3,
            linewidth=1.2,
            label=f"{label}: largest {largest}",
        )
    ax.axhline(report["memory_bytes"] / GIB, linestyle="--", color="black", linewidth=1.0, label="budget")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel(report["variable"].replace("_", " "))  # batch size, or sequence length
    ax.set_ylabel("memory (GiB)")
    what = report["variable"].replace("_", " ")
    ax.set_title(f"{report.get('model') or 'the step'}: memory against {what}")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return _save(fig, plt, path)
