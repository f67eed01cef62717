"""model_opt: a memory optimizer for deep-learning training.

Placement (`plan_csv`, `validate_csv`) turns buffer lifetimes into addresses; the runtime serves a
training step from one planned arena; reordering schedules a step's operators for a lower peak.
"""

from model_opt._native import (
    PLACEMENT_METHODS,
    SCHEDULE_METHODS,
    CapacityError,
    InputError,
    ModelOptError,
    __version__,
    caching_allocator_peak,
    plan_csv,
    schedule_graph,
    simulate_order,
    validate_csv,
)
from model_opt.errors import ArgumentError, MemoryBudgetError
from model_opt.runtime import (
    allocator,
    install_cpu_allocator,
    memory_limit,
    plan,
    profile,
    reset_peak_stats,
    save_plan,
    save_trace,
    set_memory_limit,
    stats,
    step,
)
from model_opt.snapshot import save_snapshot

__all__ = [
    "ArgumentError",
    "CaptureError",
    "PLACEMENT_METHODS",
    "SCHEDULE_METHODS",
    "CapacityError",
    "InputError",
    "MemoryBudgetError",
    "ModelOptError",
    "__version__",
    "allocator",
    "caching_allocator_peak",
    "fit",
    "install_cpu_allocator",
    "memory_limit",
    "optimize",
    "plan",
    "plan_csv",
    "plot_live_bytes",
    "plot_plan",
    "profile",
    "reset_peak_stats",
    "save_snapshot",
    "save_plan",
    "save_trace",
    "schedule_graph",
    "set_memory_limit",
    "simulate_order",
    "stats",
    "step",
    "validate_csv",
]


def optimize(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Captures a training step, reorders its operators for a lower memory peak, returns the step.

    See `model_opt.reorder.optimize` for the arguments. Imported lazily: `import model_opt` needs no torch.
    """
    from model_opt.reorder import optimize as _optimize

    return _optimize(*args, **kwargs)


def fit(*args, **kwargs):  # type: ignore[no-untyped-def]
    """The largest batch size (or sequence length) whose training step fits a memory budget: under
    PyTorch, under the model_opt arena, and with the step reordered.

    See `model_opt.fit.fit` for the arguments; `model_opt.fit.fit_model` for the benchmark's models.
    Imported lazily: `import model_opt` needs no torch.
    """
    from model_opt.fit import fit as _fit

    return _fit(*args, **kwargs)


def plot_plan(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Draws a placement solution CSV as a PNG (address vs time, one rectangle per buffer).

    See `model_opt.plot.plot_plan`. Imported lazily: needs matplotlib only when called.
    """
    from model_opt.plot import plot_plan as _plot_plan

    return _plot_plan(*args, **kwargs)


def plot_live_bytes(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Draws live bytes over a step as a PNG (e.g. eager order, reordered, the arena as a line).

    See `model_opt.plot.plot_live_bytes`. Imported lazily: needs matplotlib only when called.
    """
    from model_opt.plot import plot_live_bytes as _plot_live_bytes

    return _plot_live_bytes(*args, **kwargs)


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    """``model_opt.CaptureError`` without importing torch at ``import model_opt``."""
    if name == "CaptureError":
        from model_opt.capture.dataflow import CaptureError

        return CaptureError
    raise AttributeError(f"module 'model_opt' has no attribute {name!r}")
