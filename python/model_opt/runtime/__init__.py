"""The allocator runtime's Python API: record one training step, plan it, replay it from one arena.

Typical use::

    import torch, model_opt
    torch.cuda.memory.change_current_allocator(model_opt.allocator())  # GPU: before any CUDA tensor
    # or, on CPU: model_opt.install_cpu_allocator()
    train_step()                     # first step: optimizer state is created
    with model_opt.profile():        # one representative step, recorded
        train_step()
    report = model_opt.plan()        # offsets for the step's buffers; the arena is reserved
    for batch in loader:
        with model_opt.step():       # served at planned addresses
            train_step()
    print(model_opt.stats())

Inside ``step()`` the k-th allocation of the step is served at its planned address when the safety
check passes (size not larger than planned, same stream, and the planned bytes overlap nothing still
live); anything else is served by the fallback pool and counted in ``stats()["divergences"]``. Past
``max_divergences`` in one step, the rest of that step stops using the plan (``plan_active`` is False
and ``abandoned_steps`` counts it). When the step changes for good (new batch size, new model), record
it again: ``with model_opt.profile(): train_step()`` then ``model_opt.plan()``; the old arena is freed
once nothing lives in it. The runtime also does this by itself when two steps in a row diverge (see
``set_auto_replan``).
"""

from __future__ import annotations

from model_opt.runtime.control import (
    empty_cache,
    last_error,
    memory_limit,
    plan,
    profile,
    reset_peak_stats,
    save_plan,
    save_trace,
    set_auto_replan,
    set_max_divergences,
    set_max_plans,
    set_memory_limit,
    stats,
    step,
)
from model_opt.runtime.install import (
    _shim_source,  # noqa: F401  (the wheel test compiles the shim from it)
    allocator,
    hooks_installed,
    install_cpu_allocator,
    library_path,
    restore_default_cpu_allocator,
)

__all__ = [
    "allocator",
    "empty_cache",
    "hooks_installed",
    "install_cpu_allocator",
    "last_error",
    "library_path",
    "memory_limit",
    "plan",
    "profile",
    "reset_peak_stats",
    "restore_default_cpu_allocator",
    "save_plan",
    "save_trace",
    "set_auto_replan",
    "set_max_divergences",
    "set_max_plans",
    "set_memory_limit",
    "stats",
    "step",
]
