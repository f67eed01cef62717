"""Rematerialization: free activations that are live at a step's memory peak and recompute them right
before their later uses, so the peak goes below what any order of the operators reaches.

* `model_opt.remat.recompute`: which operators can be recomputed faithfully (bit for bit, with no
  side effect), and the *unit* that rebuilds a storage (its operator, tuple unpacking, in-place writers);
* `model_opt.remat.cost`: what a recomputation costs in operations;
* `model_opt.remat.rewrite`: the FX rewrite that inserts a unit's copy before its late uses;
* `model_opt.remat.search`: the greedy choice, round by round at the current peak.

`model_opt.optimize(..., allow=("reorder", "remat"), memory_budget=...)` uses it through
`model_opt.step_plan.plan_captured`.
"""

from model_opt.remat.search import RematReplayError, RematResult, RematStep, rematerialize, replay

__all__ = ["RematReplayError", "RematResult", "RematStep", "rematerialize", "replay"]
