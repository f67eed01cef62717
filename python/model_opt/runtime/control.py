"""Driving the allocator runtime: record a step (`profile`), plan it (`plan`), serve steps from the plan
(`step`), and read or export what it did (`stats`, `save_trace`, `save_plan`, `last_error`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from model_opt import _native
from model_opt.errors import ArgumentError
from model_opt.reports import PlanSummary, RuntimeStats


@contextlib.contextmanager
def profile() -> Iterator[None]:
    """Record the allocations of the step run inside the block (served by the fallback meanwhile).

    Allocations still live when the block ends outlive the step: they are persistent and the plan
    leaves them to the fallback pool. Profile a representative step: the very first step of training
    usually differs from the later ones (the optimizer creates its state, and later steps take other
    code paths), so run one step before profiling, or expect divergences until you profile again.
    """
    _native.runtime_begin_profile()
    try:
        yield
    finally:
        _native.runtime_end_profile()


def plan(time_limit: float = 5.0) -> PlanSummary:
    """Plan the recorded step, validate the plan, reserve its arena, and switch to planned mode.

    Args:
        time_limit: seconds the placement planner may search (the best available method runs).

    Returns:
        A `model_opt.reports.PlanSummary` dict: ``buffers`` (transient buffers planned),
        ``persistent_buffers``, ``persistent_bytes``, ``lower_bound_bytes``, ``arena_bytes``, ``ratio``
        (arena over lower bound), ``method``, ``seconds``, ``devices``.
    """
    return _native.runtime_plan(time_limit)


@contextlib.contextmanager
def step(key: str | int | None = None) -> Iterator[None]:
    """Run one training step on a plan: its k-th allocation is served at its planned address.

    The runtime keeps a plan per *step signature* (``set_max_plans``, default 16), all in one arena.
    Without ``key`` a step is recognised by what the device holds when it begins (so the first
    micro-batch of gradient accumulation, which keeps its gradients, is told from the others) and by
    its allocations: it follows a plan while its requests are exactly that plan's, and moves to
    another plan that began the same way when they differ. A step that matches no plan (a new
    sequence length, the accumulation step that runs the optimizer, a short last batch) is recorded
    while it runs (its temporaries first-fit in the arena's free space) and planned at its end, so the
    next step like it is served with zero divergences. ``key`` (e.g. the padded sequence length) names the
    signature instead: steps with the same key follow the same plan, and a new key is recorded and
    planned. What happened in the step is in ``stats()["last_step"]`` afterwards (``new_signature``
    is True for a step that was recorded as a new signature; ``first_fit`` for one served first-fit
    because memory an earlier step kept sat where its plan would put it).

    Raises:
        ModelOptError: when no plan exists yet (profile a step and call ``plan()`` first).
    """
    _native.runtime_begin_step(None if key is None else str(key))
    try:
        yield
    finally:
        _native.runtime_end_step()


def stats() -> RuntimeStats:
    """Statistics of the runtime (PyTorch's own memory statistics do not work with a custom allocator).

    A `model_opt.reports.RuntimeStats` dict (every key is listed there). Keys include ``mode``,
    ``allocated_bytes``, ``peak_allocated_bytes``, ``reserved_bytes``, ``peak_reserved_bytes`` (like
    ``torch.cuda.max_memory_reserved``),
    ``arena_bytes``, ``lower_bound_bytes``, ``planned_hits``, ``fallback_allocations``,
    ``fallback_bytes``, ``divergences``, ``plan_active``, ``transient_fallbacks``,
    ``persistent_allocations``, ``abandoned_steps``, ``auto_replans``, ``steps``, ``plans`` (step
    signatures planned), ``max_plans``, ``new_signatures``, ``signature_switches``,
    ``unplanned_allocations`` (of which ``unplanned_arena_allocations`` came from the arena's free
    space), ``last_step`` (a dict for the last step) and ``last_error`` (the last
    error a C hook recorded, or None). ``lower_bound_bytes`` is the largest lower bound of the plans.
    """
    return _native.runtime_stats()


def reset_peak_stats() -> None:
    """Set ``peak_allocated_bytes`` and ``peak_reserved_bytes`` to the bytes allocated and reserved now."""
    _native.runtime_reset_peak_stats()


def save_trace(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write the recorded step as MiniMalloc CSV (``id,lower,upper,size``), readable by ``model-opt plan``.

    Transient buffers go to ``path``; persistent ones (which outlive the step, so have no end) go to
    ``<stem>.persistent.csv`` beside it as ``id,lower,size,stream``.

    Returns:
        The two paths written.
    """
    transient, persistent = _native.runtime_trace_csv()
    out = Path(path)
    side = out.with_name(out.stem + ".persistent.csv")
    out.write_text(transient)
    side.write_text(persistent)
    return out, side


def save_plan(path: str | os.PathLike[str]) -> list[Path]:
    """Write the plans the runtime serves, as MiniMalloc solution CSV (``id,lower,upper,size,offset``).

    Each row is a buffer the arena serves: its lifetime in the recorded step's events, its slot (the
    size rounded up to 512 bytes: what the arena holds for it) and its offset in the arena, every
    stream's region included, so the largest ``offset + size`` is the plan's arena. This is the plan
    that was installed, not a new plan of the trace: ``model-opt validate``, ``plot_plan`` and
    ``save_snapshot`` read it. The most recently used signature goes to ``path``; every other
    signature (and device) to ``<stem>.<n><suffix>`` beside it, n = 1, 2, ...

    Returns:
        The paths written, the most recently used signature's first.

    Raises:
        ModelOptError: when no plan is installed.
    """
    out = Path(path)
    written = []
    for n, (_device, _key, text) in enumerate(_native.runtime_plan_csvs()):
        target = out if n == 0 else out.with_name(f"{out.stem}.{n}{out.suffix}")
        target.write_text(text)
        written.append(target)
    return written


def last_error(clear: bool = False) -> str | None:
    """The most recent error recorded by a C hook on any thread (hooks cannot raise), or None.

    ``clear=True`` forgets it. (C and C++ callers read their own thread's error with
    ``model_opt_last_error``.)
    """
    return _native.runtime_last_error(clear)


def empty_cache() -> int:
    """Return the fallback pool's unused memory to the device; the planned arena stays. Bytes freed."""
    return int(_native.runtime_empty_cache())


def set_auto_replan(enabled: bool) -> None:
    """Turn automatic planning on (the default) or off.

    On: a step that follows no plan is recorded and planned at its end as a new signature (time limit
    1 s; counted in ``stats()["new_signatures"]``), and a signature whose steps diverge twice in a row
    (say, outputs kept from earlier steps sit in its slots) is planned again from the second (counted
    in ``stats()["auto_replans"]``). If an arena cannot be reserved, the plans stay as they were and the
    reason is in ``stats()["last_error"]``. Off: steps follow the most recent plan (or the one named by
    their key) as best they can, and requests that do not fit it are divergences.
    """
    _native.runtime_set_auto_replan(enabled)


def set_max_plans(n: int) -> None:
    """Planned step signatures kept per device (default 16); past it the least recently used is dropped.

    All plans share one arena, sized for the largest, so more plans cost planning time, not memory.
    """
    if n < 1:
        raise ArgumentError(f"max plans {n} must be >= 1")
    _native.runtime_set_max_plans(n)


def set_max_divergences(n: int) -> None:
    """Divergences allowed in one step before the rest of that step stops using the plan (default 100)."""
    if n < 0:
        raise ArgumentError(f"max divergences {n} must be >= 0")
    _native.runtime_set_max_divergences(n)


def _device_index(device: str | int) -> int:
    """The runtime's index of a device: -1 for host memory (``"cpu"``), N for ``"cuda:N"`` or N."""
    if isinstance(device, int) and not isinstance(device, bool):
        if device < -1:
            raise ArgumentError(f"device {device} is not -1 (host memory) or a CUDA device index")
        return device
    text = str(device)
    if text == "cpu":
        return -1
    if text == "cuda":
        return 0
    if text.startswith("cuda:") and text[5:].isdigit():
        return int(text[5:])
    raise ArgumentError(f"device {device!r} is not 'cpu', 'cuda', 'cuda:N' or an index")


def set_memory_limit(limit: int | str | None, device: str | int = "cpu") -> None:
    """Let the runtime take at most `limit` of `device`'s memory (arena and fallback pool together):
    bytes or a size such as ``"24GiB"``; None lifts the limit.

    A request past the limit is out of memory, as when the device itself runs out: cached memory is
    given back first, and if that is not enough PyTorch raises its out-of-memory error
    (``torch.OutOfMemoryError``) and the runtime stays usable. Memory already held above a new limit
    stays held.

    On a CUDA device the refusal reaches PyTorch through model_opt's CUDA front (see ``allocator()``),
    which raises ``torch.OutOfMemoryError``; ``torch.cuda.set_per_process_memory_fraction`` sets the
    same limit as a fraction of the device's memory.

    Raises:
        ArgumentError: a bad limit or device.
    """
    from model_opt.sizes import parse_memory

    _native.runtime_set_memory_limit(_device_index(device), None if limit is None else parse_memory(limit))


def memory_limit(device: str | int = "cpu") -> tuple[int, int | None]:
    """``(held, limit)``: the bytes the runtime holds from `device` now, and its limit (None: none)."""
    return _native.runtime_memory_limit(_device_index(device))
