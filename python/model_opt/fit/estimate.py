"""What one training step needs at one size, three ways:

* ``pytorch``: the eager order's allocations replayed through the model of PyTorch's CUDA caching
  allocator on a device of limited size: the smallest device on which it runs the step
  (``caching_allocator_smallest_device``: when memory runs short, PyTorch gives back its wholly free
  cached segments and tries again before it raises out-of-memory), fragmentation included;
* ``arena``: the eager order's buffers planned (`model_opt.plan_csv`, sizes rounded to the runtime's
  512-byte slots): what the model_opt runtime reserves for the same step;
* ``reordered``: the order `model_opt.optimize` would run (`schedule_graph`), planned the same way.

Each adds the bytes that live outside the step's buffers: its resident bytes (parameters, buffers, the
inputs) and the optimizer's state. The resident bytes are counted exactly for all three (PyTorch rounds
each of those allocations to 512 bytes and keeps them in their own segments; that is not modelled).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from model_opt._native import (
    caching_allocator_peak,
    caching_allocator_smallest_device,
    plan_csv,
    schedule_graph,
)
from model_opt.fit.family import NativeGraph
from model_opt.reports import FitEstimate

#: The runtime serves every planned buffer from a slot of a multiple of this many bytes.
SLOT_BYTES = 512


def buffers_of_order(
    tensors: list[tuple[int, int, list[int], bool]], order: list[int]
) -> list[tuple[int, int, int]]:
    """``(lower, upper, size)`` of every tensor of more than 0 bytes when the operators run in `order`: a
    tensor is live from its producer's position through its last reader's (its producer's alone when
    nobody reads it), or to the end when it is an output; half-open, as the placement planner takes it.
    The same convention as the scheduler's simulator."""
    pos = [0] * len(order)
    for i, op in enumerate(order):
        pos[op] = i
    end = len(order)
    out = []
    for size, producer, consumers, output in tensors:
        if size <= 0:
            continue
        start = pos[producer]
        last = end - 1 if output else max([start, *(pos[c] for c in consumers)])
        out.append((start, last + 1, size))
    return out


def _write_csv(path: Path, buffers: list[tuple[int, int, int]], slot: int = 1) -> Path:
    with path.open("w") as f:
        f.write("id,lower,upper,size\n")
        for i, (lower, upper, size) in enumerate(buffers):
            f.write(f"{i},{lower},{upper},{-(-size // slot) * slot}\n")
    return path


def estimate(
    graph: NativeGraph, size: int, optimizer_state_bytes: int, time_limit: float = 1.0, method: str = "auto"
) -> FitEstimate:
    """The three estimates of the step `graph` at `size` (see the module doc), resident bytes and
    optimizer state included; `time_limit` bounds each of the scheduler and the two placements."""
    num_ops, tensors, edges, resident = graph
    eager = buffers_of_order(tensors, list(range(num_ops)))
    scheduled = schedule_graph(num_ops, tensors, edges, resident, method=method, time_limit=time_limit)
    reordered = buffers_of_order(tensors, scheduled["order"])
    outside = resident + optimizer_state_bytes
    with tempfile.TemporaryDirectory(prefix="model_opt_fit_") as tmp:
        folder = Path(tmp)
        trace = _write_csv(folder / "eager.csv", eager)
        caching = caching_allocator_peak(trace)
        smallest = caching_allocator_smallest_device(trace)
        arena = plan_csv(_write_csv(folder / "eager.slots.csv", eager, SLOT_BYTES), time_limit=time_limit)
        moved = plan_csv(_write_csv(folder / "moved.slots.csv", reordered, SLOT_BYTES), time_limit=time_limit)
    return {
        "size": size,
        "pytorch_bytes": outside + smallest,
        "arena_bytes": outside + arena["peak_bytes"],
        "reordered_bytes": outside + moved["peak_bytes"],
        "eager_live_peak_bytes": optimizer_state_bytes + scheduled["eager_peak_bytes"],
        "pytorch_reserved_bytes": outside + caching["reserved_peak_bytes"],
        "resident_bytes": resident,
        "optimizer_state_bytes": optimizer_state_bytes,
    }
