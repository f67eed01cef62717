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
    plan_csv,
    schedule_graph,
    simulate_order,
    validate_csv,
)
from model_opt.runtime import (
    allocator,
    install_cpu_allocator,
    plan,
    profile,
    reset_peak_stats,
    save_trace,
    stats,
    step,
)

__all__ = [
    "PLACEMENT_METHODS",
    "SCHEDULE_METHODS",
    "CapacityError",
    "InputError",
    "ModelOptError",
    "__version__",
    "allocator",
    "install_cpu_allocator",
    "optimize",
    "plan",
    "plan_csv",
    "profile",
    "reset_peak_stats",
    "save_trace",
    "schedule_graph",
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
