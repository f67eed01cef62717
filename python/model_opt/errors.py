"""Every error model_opt raises derives from `ModelOptError`.

* `InputError`: bad input (a malformed file, an impossible request); `ArgumentError` is the one raised
  for a bad argument of a Python function, and is also a ``ValueError``.
* `CapacityError`: no plan fits the capacity asked for; `MemoryBudgetError`, one of them, is raised when
  no order (and no recomputation, where allowed) brings a training step under its memory budget.
* `CaptureError` (`model_opt.capture`): a step cannot be captured faithfully; also a ``RuntimeError``.
* `DemoError` (`model_opt.apps.demo`): the demo cannot run; also a ``RuntimeError``.
"""

from __future__ import annotations

from model_opt._native import CapacityError, InputError, ModelOptError


class ArgumentError(InputError, ValueError):
    """A bad argument of a Python function of model_opt (a ``ValueError`` too, as Python expects)."""


class MemoryBudgetError(CapacityError):
    """No plan brings a training step's simulated peak under the memory budget asked for; the message
    gives the least peak found, what holds it, and what else could be allowed."""


__all__ = ["ArgumentError", "CapacityError", "InputError", "MemoryBudgetError", "ModelOptError"]
