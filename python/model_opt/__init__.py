"""model_opt: a memory optimizer for deep-learning training.

Placement (`plan_csv`, `validate_csv`) turns buffer lifetimes into addresses; the runtime serves a
training step from one planned arena; reordering schedules a step's operators for a lower peak.
"""

from model_opt._native import (
    PLACEMENT_METHODS,
    CapacityError,
    InputError,
    ModelOptError,
    __version__,
    plan_csv,
    validate_csv,
)

__all__ = [
    "PLACEMENT_METHODS",
    "CapacityError",
    "InputError",
    "ModelOptError",
    "__version__",
    "plan_csv",
    "validate_csv",
]
