"""Rematerialization and spilling: free activations that are live at a step's memory peak and recompute
them (or fetch them back from host memory) right before their later uses, so the peak goes below what
any order of the operators reaches.

* `model_opt.remat.recompute`: which operators can be recomputed faithfully (bit for bit, with no
  side effect), and the *unit* that rebuilds a storage (its operator, tuple unpacking, in-place writers);
* `model_opt.remat.cost`: what a recomputation costs in operations;
* `model_opt.remat.host`: the ``spill`` and ``fetch`` operators that move a value to host memory and
  back (pinned memory and a copy stream on CUDA; a counted stand-in outside the arena on CPU);
* `model_opt.remat.rewrite`: the FX rewrites that insert a unit's copy, or a spill and its fetch, before
  the late uses;
* `model_opt.remat.search`: the greedy choice, round by round at the current peak, between recomputing
  and spilling.

`model_opt.optimize(..., allow=("reorder", "remat", "spill"), memory_budget=...)` uses it through
`model_opt.step_plan.plan_captured`.
"""

from model_opt.remat.search import RematReplayError, RematResult, RematStep, rematerialize, replay

__all__ = ["RematReplayError", "RematResult", "RematStep", "rematerialize", "replay"]
