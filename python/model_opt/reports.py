"""The reports model_opt returns, as typed dicts.

Each report is defined once, in Rust (``src/report.rs``): its keys in order and where each value comes
from. These typed dicts describe the same keys for type checkers and readers, and a test checks them
against ``model_opt._native.REPORT_KEYS`` so that the two cannot drift apart. Reports are plain dicts
at run time (as ``torch.cuda.memory_stats()`` is), so ``report["peak_bytes"]`` works everywhere.

One naming scheme: a number of bytes ends in ``_bytes``; a duration is ``seconds``; a status is one of
`STATUSES`.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

#: What is known about a plan or an order: ``optimal`` (it meets a proven lower bound), ``feasible``
#: (valid, no proof), ``time_limit`` (the time limit came first: the best found so far). ``infeasible``
#: is never in a report: planning raises `model_opt.CapacityError` instead.
Status = Literal["optimal", "feasible", "infeasible", "time_limit"]
STATUSES: tuple[str, ...] = ("optimal", "feasible", "infeasible", "time_limit")


class PlacementSummary(TypedDict):
    """A placement of a CSV file's buffers (`model_opt.plan_csv`, ``model-opt plan``)."""

    buffers: int
    #: Bytes live at the busiest moment: no plan can be smaller.
    lower_bound_bytes: int
    #: The best lower bound proven while planning (at least `lower_bound_bytes`).
    proven_bound_bytes: int
    #: The plan's arena: the highest end of any buffer.
    peak_bytes: int
    #: ``peak_bytes / lower_bound_bytes`` (1 for an empty file).
    ratio: float
    #: The method, and what found the plan, e.g. ``auto/search``.
    method: str
    status: Status
    seconds: float


class ValidationSummary(TypedDict):
    """A solution file that passed every check (`model_opt.validate_csv`, ``model-opt validate``)."""

    buffers: int
    lower_bound_bytes: int
    peak_bytes: int


class PlanSummary(TypedDict):
    """The runtime's plan of the profiled step (`model_opt.plan`)."""

    buffers: int
    persistent_buffers: int
    persistent_bytes: int
    lower_bound_bytes: int
    #: The arena reserved: the plan's peak over its slots (sizes rounded to 512 bytes).
    arena_bytes: int
    ratio: float
    method: str
    seconds: float
    devices: list[int]


class StepStats(TypedDict):
    """What happened in one step (``stats()["last_step"]``)."""

    allocations: int
    planned_hits: int
    persistent_allocations: int
    transient_fallbacks: int
    divergences: int
    #: The step passed the divergence limit and stopped using its plan.
    abandoned: bool
    #: The step followed no planned signature: it was recorded, to be planned at its end.
    new_signature: bool
    unplanned_allocations: int
    #: The step was served first-fit from the arena (memory an earlier step kept sat in its plan).
    first_fit: bool


class RuntimeStats(TypedDict):
    """A snapshot of the runtime (`model_opt.stats`). Its numbers are also readable from C by key,
    through ``model_opt_stat`` (booleans as 0 or 1)."""

    mode: str
    in_step: bool
    plan_active: bool
    allocated_bytes: int
    peak_allocated_bytes: int
    reserved_bytes: int
    peak_reserved_bytes: int
    arena_bytes: int
    fallback_reserved_bytes: int
    lower_bound_bytes: int
    persistent_bytes: int
    plan_buffers: int
    allocations: int
    frees: int
    planned_hits: int
    fallback_allocations: int
    fallback_bytes: int
    divergences: int
    persistent_allocations: int
    transient_fallbacks: int
    record_stream_fallbacks: int
    steps: int
    abandoned_steps: int
    unknown_frees: int
    out_of_memory: int
    auto_replans: int
    new_signatures: int
    signature_switches: int
    unplanned_allocations: int
    unplanned_arena_allocations: int
    arenas_returned: int
    #: Frees while a CUDA graph was being captured: their memory is held for good, never reused.
    graph_held_frees: int
    graph_held_bytes: int
    #: Requests of CUDA graph captures, served from the graphs' private pools (PyTorch's pool hooks).
    graph_pool_allocations: int
    #: Segments of those pools (part of reserved_bytes); given back when PyTorch releases a pool.
    graph_pool_bytes: int
    plans: int
    max_plans: int
    max_divergences: int
    devices: list[int]
    last_step: StepStats
    #: The most recent error a C hook recorded (hooks cannot raise), or None.
    last_error: str | None


class ScheduleResult(TypedDict):
    """An operator order (``model_opt._native.schedule_graph``, behind `model_opt.reorder`)."""

    order: list[int]
    peak_bytes: int
    #: The peak of the captured order.
    eager_peak_bytes: int
    lower_bound_bytes: int
    status: Status
    method: str
    seconds: float
    #: Windows the decomposition solved (0 when it did not run).
    windows: int


class CachingAllocatorPeak(TypedDict):
    """A trace replayed through the model of PyTorch's caching allocator
    (``model_opt._native.caching_allocator_peak``)."""

    buffers: int
    allocations: int
    #: The most bytes held in segments (``max_memory_reserved``).
    reserved_peak_bytes: int
    allocated_at_peak_bytes: int
    requested_at_peak_bytes: int
    #: Share of reserved memory cached but unusable when the allocator had to grow.
    fragmentation: float
    peak_allocated_bytes: int
    #: The trace's max load: a lower bound on any arena.
    peak_requested_bytes: int
    segments: int
    small_segments: int
    large_segments: int
    #: Times memory ran short and the free cached segments were given back (with a ``capacity``).
    cache_flushes: int


#: Every typed report by the name Rust gives it (the keys of ``_native.REPORT_KEYS``).
REPORTS: dict[str, type] = {
    "PlacementSummary": PlacementSummary,
    "ValidationSummary": ValidationSummary,
    "PlanSummary": PlanSummary,
    "StepStats": StepStats,
    "RuntimeStats": RuntimeStats,
    "ScheduleResult": ScheduleResult,
    "CachingAllocatorPeak": CachingAllocatorPeak,
}


# Reports made in Python (not in ``_native.REPORT_KEYS``).

#: The ways `model_opt.fit` estimates a step's memory, in the order reports list them, and how they are
#: named to people (``remat`` only when asked for: ``fit(..., remat=True)``, ``model-opt fit --remat``).
FIT_WAYS = {
    "pytorch": "PyTorch (caching allocator model)",
    "arena": "model_opt arena",
    "reordered": "model_opt reordered + arena",
    "remat": "model_opt remat + reordered + arena",
}


class FitEstimate(TypedDict):
    """The bytes one training step needs at one size (`model_opt.fit.estimate.estimate`), resident bytes
    and optimizer state included."""

    size: int
    #: The smallest device PyTorch's caching allocator (its model) runs the step on.
    pytorch_bytes: int
    #: What the model_opt runtime would reserve for the eager order.
    arena_bytes: int
    #: The same for the order `model_opt.optimize` runs.
    reordered_bytes: int
    #: The same with recomputation (None without ``remat=True``): the rematerialized step, planned in
    #: its order or reordered, whichever needs less.
    remat_bytes: int | None
    #: Resident bytes plus the most bytes of the eager order live at once: no allocator does better
    #: without reordering.
    eager_live_peak_bytes: int
    #: What PyTorch reserves with memory to spare (``max_memory_reserved``).
    pytorch_reserved_bytes: int
    #: Weights, buffers and the step's inputs.
    resident_bytes: int
    #: The optimizer's state (outside the graph; the same in all three).
    optimizer_state_bytes: int
    #: What the resident tensors and the optimizer's state take in the caching allocator's segments
    #: on their own (under model_opt: the fallback pool, beside the arena).
    residents_reserved_bytes: int


class FitReport(TypedDict):
    """The largest size whose step fits a budget (`model_opt.fit`, ``model-opt fit``)."""

    #: The registry's model name (``fit_model``), or None for a step function.
    model: str | None
    #: The registry model's parameter type (``fp32``, ``bf16``, ``fp16``) and whether its forward pass
    #: ran under autocast to bfloat16; None for a step function (its own code decides).
    dtype: str | None
    amp: bool | None
    #: What the size is: ``batch_size`` or ``seq_len``.
    variable: str
    memory_bytes: int
    #: The smallest and largest size tried.
    sizes: list[int]
    #: The largest size that fits, per way (``pytorch``, ``arena``, ``reordered``); None when even the
    #: smallest does not.
    largest: dict[str, int | None]
    #: ``largest["arena"] / largest["pytorch"]`` (None when PyTorch fits nothing).
    ratio_arena: float | None
    ratio_reordered: float | None
    #: ``largest["remat"] / largest["pytorch"]``; None without ``remat=True``.
    ratio_remat: float | None
    #: With ``remat=True``: what is recomputed (``recomputed``, ``chained`` operator names of the capture
    #: it was chosen on, ``extra_compute`` as a fraction of the step's operations, ``chosen_at`` the size
    #: of that capture, ``stopped`` why the search stopped, ``chosen_again_at`` the sizes whose capture
    #: has another structure, where the choice was made afresh); None otherwise.
    remat: dict[str, Any] | None
    weights_bytes: int
    #: The optimizer's state after its first step (measured, or probed on a small copy: see
    #: `model_opt.fit.optimizer`).
    optimizer_state_bytes: int
    #: The most bytes one optimizer-step operator makes and drops while it runs (its largest
    #: parameter's update); counted in every estimate, at that operator.
    optimizer_step_temporaries_bytes: int
    #: Hugging Face accelerate's ``estimate-memory`` for training with Adam (4x the weights; no
    #: activations), for comparison.
    accelerate_adam_bytes: int
    #: Each way's estimate at its largest size.
    at_largest: dict[str, FitEstimate | None]
    #: Every size estimated, in order.
    evaluations: list[FitEstimate]
    #: True when the step's sizes were fitted from four captures (see `model_opt.fit.family`).
    fitted: bool
    captures: int
    seconds: float
