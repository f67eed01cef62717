"""Export a recorded step as a PyTorch memory snapshot, to open in PyTorch's memory visualizer.

The file is a pickle of the dict ``torch.cuda.memory._snapshot()`` returns (what
``torch.cuda.memory._dump_snapshot`` writes): ``segments`` (the allocator's segments and their blocks
at the end of the step) and ``device_traces`` (one list of trace entries per device: ``segment_alloc``,
``alloc``, ``free_requested``, ``free_completed``). It opens at https://pytorch.org/memory_viz and in
``torch.cuda._memory_viz`` (``trace_plot``, ``segment_plot``, ``segsum``, ``trace``...).

Two layouts of the same trace:

- with a plan (``plan_csv``, a solution CSV from ``model-opt plan``): one segment, the planned arena,
  and every buffer at the arena's base plus its planned offset;
- without: the addresses and segments the model of PyTorch's caching allocator gives the trace
  (``model_opt.caching_allocator_peak`` reports its numbers), which shows where PyTorch would
  fragment.

Each trace entry carries one frame naming its buffer (``filename`` is the trace file, ``line`` the
buffer's row, ``name`` its id), so the visualizer's tooltips say which buffer is which. Times
(``time_us``) are the trace's event indices. Buffers of 0 bytes are left out, as PyTorch never
allocates them. Everything is on device 0, stream 0 (MiniMalloc CSV carries neither).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Union

from model_opt import _native
from model_opt._native import InputError

__all__ = ["ARENA_BASE", "build_snapshot", "save_snapshot"]

PathLike = Union[str, "os.PathLike[str]"]

#: Address of the arena's first byte in a planned snapshot (the caching model's segments start here too).
ARENA_BASE = 1 << 32
#: The runtime's slot rounding: a served plan (``save_plan``) holds each buffer's size rounded up to it.
SLOT = 512

Snapshot = dict[str, Any]
Frame = dict[str, Any]


def _rows(path: Path) -> dict[str, Any]:
    """The columns of a MiniMalloc CSV file, read by the project's one CSV reader
    (`model_opt._native.read_csv`); raises `InputError` naming the file and line of a bad row."""
    return _native.read_csv(path)


def _frames(trace: Path, line: int, buffer_id: str) -> list[Frame]:
    return [{"filename": str(trace), "line": line, "name": buffer_id}]


def _entry(action: str, addr: int, size: int, time: int, frames: list[Frame]) -> dict[str, Any]:
    return {"action": action, "addr": addr, "size": size, "stream": 0, "time_us": time, "frames": frames}


def _segment(address: int, total_size: int, segment_type: str, blocks: list[dict[str, Any]]) -> Snapshot:
    allocated = sum(b["size"] for b in blocks if b["state"] == "active_allocated")
    return {
        "device": 0,
        "address": address,
        "total_size": total_size,
        "allocated_size": allocated,
        "active_size": allocated,
        "requested_size": sum(b["requested_size"] for b in blocks if b["state"] == "active_allocated"),
        "stream": 0,
        "segment_type": segment_type,
        "segment_pool_id": (0, 0),
        "is_expandable": False,
        "frames": [],
        "blocks": blocks,
    }


def _free_block(address: int, size: int) -> dict[str, Any]:
    return {"address": address, "size": size, "requested_size": 0, "state": "inactive", "frames": []}


def _check_plan_matches(trace: Path, t: dict[str, Any], plan: Path, p: dict[str, Any]) -> None:
    """Raises `InputError` unless the plan has exactly the trace's buffers (same ids), each with the
    trace's lifetime and its size, or its slot (the size rounded up to 512 bytes, as ``save_plan``
    writes the plan the runtime served): only then do the plan's offsets, validated against the
    plan's own lifetimes, keep every two buffers of the trace that live together apart."""
    if p["offset"] is None:
        raise InputError(f"{plan}: no offset column: not a plan (write one with model-opt plan --output)")
    row_of = {buffer_id: j for j, buffer_id in enumerate(p["ids"])}
    for i, buffer_id in enumerate(t["ids"]):
        where = f"{trace}:{t['lines'][i]}"
        j = row_of.pop(buffer_id, None)
        if j is None:
            raise InputError(f"{where}: buffer '{buffer_id}' of the trace is not in the plan {plan}")
        at = f"{plan}:{p['lines'][j]}"
        t_life, p_life = (t["lower"][i], t["upper"][i]), (p["lower"][j], p["upper"][j])
        if t_life != p_life:
            raise InputError(
                f"{at}: buffer '{buffer_id}' lives [{p_life[0]}, {p_life[1]}) in the plan but "
                f"[{t_life[0]}, {t_life[1]}) in the trace ({where}): the plan is not of this trace"
            )
        if p["size"][j] not in (t["size"][i], -(-t["size"][i] // SLOT) * SLOT):
            raise InputError(
                f"{at}: buffer '{buffer_id}' has size {p['size'][j]} in the plan but {t['size'][i]} "
                f"in the trace ({where}), nor its {SLOT}-byte slot: the plan is not of this trace"
            )
    if row_of:
        buffer_id, j = min(row_of.items(), key=lambda item: item[1])
        at = f"{plan}:{p['lines'][j]}"
        raise InputError(f"{at}: buffer '{buffer_id}' of the plan is not in the trace {trace}")


def _planned(trace: Path, plan: Path) -> Snapshot:
    """The snapshot of a trace served from one arena at its planned offsets."""
    t, p = _rows(trace), _rows(plan)
    _check_plan_matches(trace, t, plan, p)
    _native.validate_csv(plan)  # every offset aligned, no two live buffers sharing a byte
    offset_of = dict(zip(p["ids"], p["offset"]))
    # The arena as the plan reserves it (a served plan's slots may be larger than the requests).
    planned_top = max((o + z for o, z in zip(p["offset"], p["size"]) if z > 0), default=0)
    buffers = [
        {"id": i, "lower": lo, "upper": hi, "size": size, "offset": offset_of[i], "line": line}
        for i, lo, hi, size, line in zip(t["ids"], t["lower"], t["upper"], t["size"], t["lines"])
    ]
    arena = max(planned_top, max((b["offset"] + b["size"] for b in buffers if b["size"] > 0), default=0))
    # (time, 0 = free / 1 = alloc, row): frees first at equal times (lifetimes are half-open).
    order = sorted(
        [(b["lower"], 1, i) for i, b in enumerate(buffers) if b["size"] > 0]
        + [(b["upper"], 0, i) for i, b in enumerate(buffers) if b["size"] > 0]
    )
    entries = []
    if order:
        entries.append(_entry("segment_alloc", ARENA_BASE, arena, order[0][0], []))
    for time, kind, i in order:
        b = buffers[i]
        addr, frames = ARENA_BASE + b["offset"], _frames(trace, b["line"], b["id"])
        if kind == 1:
            entries.append(_entry("alloc", addr, b["size"], time, frames))
        else:
            entries.append(_entry("free_requested", addr, b["size"], time, frames))
            entries.append(_entry("free_completed", addr, b["size"], time, frames))
    segments = [_segment(ARENA_BASE, arena, "large", [_free_block(ARENA_BASE, arena)])] if arena else []
    return {"segments": segments, "device_traces": [entries]}


def _cached(trace: Path) -> Snapshot:
    """The snapshot of a trace served by the model of PyTorch's caching allocator."""
    replay = _native.caching_allocator_replay(trace)
    rows = _rows(trace)
    ids, lines = rows["ids"], rows["lines"]
    entries = []
    for action, i, addr, size, _stream, time in replay["events"]:
        frames = _frames(trace, lines[i], ids[i])
        if action == "segment_alloc":
            entries.append(_entry("segment_alloc", addr, size, time, []))
        elif action == "alloc":
            entries.append(_entry("alloc", addr, size, time, frames))
        else:
            entries.append(_entry("free_requested", addr, size, time, frames))
            entries.append(_entry("free_completed", addr, size, time, frames))
    segments = []
    for seg in replay["segment_layout"]:
        blocks = [
            {
                "address": address,
                "size": size,
                "requested_size": requested,
                "state": "active_allocated" if allocated else "inactive",
                "frames": [],
            }
            for address, size, requested, allocated in seg["blocks"]
        ]
        segments.append(_segment(seg["address"], seg["total_size"], seg["segment_type"], blocks))
    return {"segments": segments, "device_traces": [entries]}


def build_snapshot(trace_csv: PathLike, plan_csv: PathLike | None = None) -> Snapshot:
    """The memory snapshot of a recorded step, as ``torch.cuda.memory._snapshot()`` would return it.

    Args:
        trace_csv: the step's buffers as MiniMalloc CSV (``id,lower,upper,size``), e.g. from
            ``model_opt.save_trace``.
        plan_csv: a solution CSV for that trace (an ``offset`` per buffer, from ``model-opt plan`` or
            ``model_opt.plan_csv(..., output=...)``). Without it, the caching allocator model lays
            the buffers out.

    Returns:
        A dict with ``segments`` and ``device_traces`` (see the module docs).

    Raises:
        model_opt.InputError: a malformed file, an invalid plan, or a plan that is not of this trace
            (a buffer missing on either side, or another lifetime or size).
    """
    trace = Path(trace_csv)
    return _planned(trace, Path(plan_csv)) if plan_csv is not None else _cached(trace)


def save_snapshot(trace_csv: PathLike, path: PathLike, plan_csv: PathLike | None = None) -> Path:
    """Writes the memory snapshot of a recorded step as a pickle; returns the path written.

    The file opens in https://pytorch.org/memory_viz and in ``python -m torch.cuda._memory_viz``
    (``trace_plot``, ``segment_plot``, ``stats``, ``trace``). See `build_snapshot` for the arguments.

    Raises:
        model_opt.InputError: as `build_snapshot`, or when the file cannot be written.
    """
    snapshot = build_snapshot(trace_csv, plan_csv)
    out = Path(path)
    try:
        with out.open("wb") as f:
            pickle.dump(snapshot, f)
    except OSError as e:
        raise InputError(f"{out}: cannot write: {e.strerror or e}") from None
    return out
