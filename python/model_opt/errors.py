"""Every error model_opt raises derives from `ModelOptError`.

* `InputError`: bad input (a malformed file, an impossible request); `ArgumentError` is the one raised
  for a bad argument of a Python function, and is also a ``ValueError``.
* `CapacityError`: no plan fits the capacity asked for.
* `CaptureError` (`model_opt.capture`): a step cannot be captured faithfully; also a ``RuntimeError``.
* `DemoError` (`model_opt.apps.demo`): the demo cannot run; also a ``RuntimeError``.
"""

from __future__ import annotations

from model_opt._native import CapacityError, InputError, ModelOptError


class ArgumentError(InputError, ValueError):
    """A bad argument of a Python function of model_opt (a ``ValueError`` too, as Python expects)."""


__all__ = ["ArgumentError", "CapacityError", "InputError", "ModelOptError"]
