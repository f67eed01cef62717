"""What one training step needs at one size, three ways:

* ``pytorch``: the eager order's allocations replayed through the model of PyTorch's CUDA caching
  allocator on a device of limited size: the smallest device on which it runs the step
  (``caching_allocator_smallest_device``: when memory runs short, PyTorch gives back its wholly free
  cached segments and tries again before it raises out-of-memory), fragmentation included;
* ``arena``: the eager order's buffers planned (`model_opt.plan_csv`, sizes rounded to the runtime's
  512-byte slots): what the model_opt runtime reserves for the same step;
* ``reordered``: the order `model_opt.optimize` would run (`schedule_graph`), planned the same way.

Each adds what lives outside the step's buffers, the resident tensors: the parameters, buffers and
optimizer state (`Residents`), and the inputs. They are allocations of their own, each rounded and kept
in segments as the caching allocator keeps them (a parameter of 3 MiB takes a 20 MiB segment it shares
only with other 1–10 MiB tensors), and the optimizer's state is made where a training run makes it: at
the first step's optimizer call, amid that step's own blocks, whose segments it may then pin. Under
PyTorch the first two steps share the caching allocator with them (`first_steps`); under model_opt the
same two steps (the warm-up and the profiled one) run in the runtime's fallback pool, which rounds and
segments as PyTorch does, and what the pool keeps once its cache is given back (`kept_segments`) stays
beside the arena.
"""

from __future__ import annotations

import bisect
import tempfile
from dataclasses import dataclass
from pathlib import Path

from model_opt._native import (
    caching_allocator_replay,
    caching_allocator_smallest_device,
    plan_csv,
    schedule_graph,
)
from model_opt.fit.family import NativeGraph
from model_opt.reports import FitEstimate

#: The runtime serves every planned buffer from a slot of a multiple of this many bytes.
SLOT_BYTES = 512


@dataclass(frozen=True)
class Residents:
    """The tensors a step finds allocated, one allocation each: ``tensors``, the bytes of each parameter
    and buffer storage; ``optimizer_state``, of each optimizer state tensor (measured, or as probed:
    `model_opt.fit.optimizer`). The rest of a graph's resident bytes (its inputs, gradients kept from an
    earlier call) is counted as one more allocation.

    ``state_at`` places the optimizer's state where a training run creates it: ``(operator, bytes)``,
    the tensors the first step makes at its optimizer's first ``optimizer_step`` operator (empty when
    the step has no such operator: then the state is allocated before it)."""

    tensors: tuple[int, ...]
    optimizer_state: tuple[int, ...]
    state_at: tuple[tuple[int, int], ...] = ()

    def at(self, resident_bytes: int) -> list[int]:
        """Every allocation held before the first step of a step whose graph holds `resident_bytes`."""
        rest = resident_bytes - sum(self.tensors)
        before = () if self.state_at else self.optimizer_state
        return [*self.tensors, *before, *([rest] if rest > 0 else [])]


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


def first_steps(
    residents: list[int],
    state_at: tuple[tuple[int, int], ...],
    buffers: list[tuple[int, int, int]],
    num_ops: int,
) -> list[tuple[int, int, int]]:
    """The first two steps of a training run, as the allocator sees them: `residents` allocated first and
    live throughout; the step's `buffers` (positions 0..`num_ops`) twice, one step after the other; the
    optimizer's state made by the first step's operators (`state_at`) and kept. The last time step
    (`end_of`) frees what is left."""
    span = num_ops + 1
    end = end_of(num_ops)
    out = [(0, end, size) for size in residents]
    for first in (1, 1 + span):
        out += [(lo + first, up + first, size) for lo, up, size in buffers]
    out += [(1 + op, end, size) for op, size in state_at]
    return out


def end_of(num_ops: int) -> int:
    """The time step at which `first_steps`' trace frees what it kept."""
    return 1 + 2 * (num_ops + 1)


def kept_segments(events: list[tuple[str, int, int, int, int, int]], end: int) -> int:
    """Bytes of the caching allocator's segments that hold an allocation just before time `end`, from
    the `events` of a replay (`caching_allocator_replay`): what stays reserved when the cache is given
    back."""
    segments: list[tuple[int, int]] = []
    live: dict[int, int] = {}
    for action, buffer, addr, size, _stream, time in events:
        if action == "segment_alloc":
            segments.append((addr, size))
        elif time < end:
            if action == "alloc":
                live[buffer] = addr
            else:
                live.pop(buffer, None)
    segments.sort()
    starts = [a for a, _ in segments]
    holding = {bisect.bisect_right(starts, addr) - 1 for addr in live.values()}
    return sum(segments[i][1] for i in holding if i >= 0)


def estimate(
    graph: NativeGraph, size: int, residents: Residents, time_limit: float = 1.0, method: str = "auto"
) -> FitEstimate:
    """The three estimates of the step `graph` at `size` (see the module doc), resident tensors
    included; `time_limit` bounds each of the scheduler and the two placements."""
    num_ops, tensors, edges, resident = graph
    eager = buffers_of_order(tensors, list(range(num_ops)))
    scheduled = schedule_graph(num_ops, tensors, edges, resident, method=method, time_limit=time_limit)
    reordered = buffers_of_order(tensors, scheduled["order"])
    held = residents.at(resident)
    state = sum(residents.optimizer_state)
    with tempfile.TemporaryDirectory(prefix="model_opt_fit_") as tmp:
        folder = Path(tmp)
        # PyTorch: the residents and the first two steps through one caching allocator (the first
        # makes the optimizer's state, amid its own blocks).
        whole = _write_csv(folder / "eager.csv", first_steps(held, residents.state_at, eager, num_ops))
        caching = caching_allocator_replay(whole)
        smallest = caching_allocator_smallest_device(whole)
        # model_opt: the warm-up and profiled steps run in the fallback pool (PyTorch's rules); what it
        # keeps once its cache is given back stays beside the arena, where the planned steps run.
        outside = kept_segments(caching["events"], end_of(num_ops))
        arena = plan_csv(_write_csv(folder / "eager.slots.csv", eager, SLOT_BYTES), time_limit=time_limit)
        moved = plan_csv(_write_csv(folder / "moved.slots.csv", reordered, SLOT_BYTES), time_limit=time_limit)
    return {
        "size": size,
        "pytorch_bytes": smallest,
        "arena_bytes": outside + arena["peak_bytes"],
        "reordered_bytes": outside + moved["peak_bytes"],
        "remat_bytes": None,  # `model_opt.fit.Fitting` fills it in when asked to
        "eager_live_peak_bytes": state + scheduled["eager_peak_bytes"],
        "pytorch_reserved_bytes": caching["reserved_peak_bytes"],
        "resident_bytes": resident,
        "optimizer_state_bytes": state,
        "residents_reserved_bytes": outside,
    }
