"""`model_opt.fit`'s predictions checked against real runs on CPU, under the runtime's memory limit.

For a model, a budget, and the size `fit` predicts for the arena, each real run is a fresh process
(the runtime is process-wide): the CPU allocator installed, the limit set (or not), a warm-up step, a
profiled step, `plan()`, then planned steps. It reports whether the run stayed within the limit and
what the runtime held. `check` compares:

* the predicted arena (the step's buffers; the resident tensors and optimizer state left out) with the
  arena the runtime planned from the real trace, at the predicted size, without a limit, and the
  predicted total (the arena, and the pool holding the resident tensors) with what the runtime holds;
* the predicted largest size with the largest size whose run fits the budget, found by bisection on
  real runs: with the limit set from the first step (the profiled step is served by the fallback pool,
  a caching allocator like PyTorch's, so it must fit too), and with the limit set once the plan is
  made and the pool's cache given back (what the planned steps need: the arena and the pool must hold
  no more than the limit, and the steps must run within it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from model_opt.apps import models
from model_opt.capture.step import model_step
from model_opt.fit import Fitting
from model_opt.fit.search import largest_fitting
from model_opt.sizes import parse_memory

#: The models a check can build: the registry's, and "mlp", small enough for the test suite.
MLP = "mlp"


Built = tuple[nn.Module, torch.optim.Optimizer, Callable[..., Any], Callable[[int], tuple[Any, ...]]]


def build(name: str) -> Built:
    """The model `name`, its AdamW optimizer, its step function and its batches, the same in every
    process (seed 0)."""
    torch.manual_seed(0)
    if name == MLP:
        model: nn.Module = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                                         nn.Linear(1024, 10))  # fmt: skip
        loss_fn: Callable[..., torch.Tensor] = nn.functional.cross_entropy

        def batch_of(b: int) -> tuple[Any, ...]:
            return torch.randn(b, 256), torch.randint(0, 10, (b,))
    else:
        model, _, _ = models.example(name, 1)
        loss_fn = models.loss_for(name)

        def batch_of(b: int) -> tuple[Any, ...]:
            return models.batch_of(name, b)

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, opt, model_step(model, opt, loss_fn), batch_of


WORKER = """
import json, sys, torch, model_opt
from model_opt.apps.fit_check import build
spec = json.loads(sys.argv[1])
torch.set_num_threads(1)
model_opt.install_cpu_allocator()
if spec["limit"] is not None and spec["limit_from"] == "start":
    model_opt.set_memory_limit(spec["limit"])
model, opt, step, batch_of = build(spec["model"])
b = spec["size"]
out = {"size": b}
try:
    step(*batch_of(b))
    with model_opt.profile():
        step(*batch_of(b))
    out["plan"] = model_opt.plan(time_limit=spec["time_limit"])
    if spec["limit"] is not None and spec["limit_from"] == "plan":
        # What the planned steps need: the pool's cache given back, then the limit; memory already
        # held above it (the arena) would stay held, so it must be within the limit itself.
        model_opt.runtime.empty_cache()
        model_opt.set_memory_limit(spec["limit"])
        if model_opt.memory_limit()[0] > spec["limit"]:
            raise model_opt.ModelOptError("the arena and the pool hold more than the limit")
    for _ in range(2):
        with model_opt.step():
            step(*batch_of(b))
    out["ok"] = model_opt.memory_limit()[0] <= (spec["limit"] or float("inf"))
except (torch.OutOfMemoryError, model_opt.ModelOptError) as e:
    out["ok"], out["error"] = False, str(e)[:300]
s = model_opt.stats()
out["stats"] = {k: s[k] for k in ("arena_bytes", "reserved_bytes", "peak_reserved_bytes", "divergences")}
out["held"] = model_opt.memory_limit()[0]
# What the planned steps keep: the arena and the pool's segments that hold something (the resident
# tensors), once the cache the warm-up and profiled steps left is given back.
model_opt.runtime.empty_cache()
out["steady_bytes"] = model_opt.stats()["reserved_bytes"]
print(json.dumps(out))
"""


def run_real(name: str, size: int, limit: int | None = None, limit_from: str = "start",
             time_limit: float = 1.0) -> dict[str, Any]:  # fmt: skip
    """One real run in a fresh process (see the module doc); ``ok`` says whether it stayed in `limit`."""
    spec = {"model": name, "size": size, "limit": limit, "limit_from": limit_from, "time_limit": time_limit}
    r = subprocess.run([sys.executable, "-c", WORKER, json.dumps(spec)], capture_output=True, text=True,
                       timeout=1800)  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"the run of {name} at {size} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def check(
    name: str, memory: int | str, max_size: int = 4096, time_limit: float = 1.0, bisect: bool = True
) -> dict[str, Any]:
    """`fit`'s prediction for `name` under `memory`, and the real runs that check it (module doc);
    without `bisect`, only the arena at the predicted size."""
    budget = parse_memory(memory)
    model, opt, step, batch_of = build(name)
    fitting = Fitting(step, batch_of, sizes=(1, max_size), modules=[model], optimizers=[opt],
                      time_limit=time_limit)  # fmt: skip
    report = fitting.report(budget)
    predicted = report["largest"]["arena"]
    out: dict[str, Any] = {"model": name, "memory_bytes": budget, "predicted": report["largest"]}
    if predicted is None:
        return out
    e = fitting.at(predicted)
    real = run_real(name, predicted, time_limit=time_limit)
    out["arena_predicted_bytes"] = e["arena_bytes"] - e["residents_reserved_bytes"]
    out["arena_measured_bytes"] = real["stats"]["arena_bytes"]
    out["arena_error"] = out["arena_predicted_bytes"] / max(out["arena_measured_bytes"], 1) - 1
    # Everything the planned steps hold: the arena, and the pool's segments with the resident tensors.
    out["total_predicted_bytes"] = e["arena_bytes"]
    out["total_measured_bytes"] = real["steady_bytes"]
    out["total_error"] = out["total_predicted_bytes"] / max(out["total_measured_bytes"], 1) - 1
    out["peak_reserved_measured_bytes"] = real["stats"]["peak_reserved_bytes"]
    if not bisect:
        return out
    runs: dict[str, list[dict[str, Any]]] = {"start": [], "plan": []}
    for limit_from in runs:

        def fits(n: int, where: str = limit_from) -> bool:
            r = run_real(name, n, budget, where, time_limit)
            runs[where].append({"size": n, "ok": r["ok"], "held": r["held"]})
            return bool(r["ok"])

        out[f"largest_real_limit_from_{limit_from}"] = largest_fitting(fits, 1, 2 * predicted)
    out["runs"] = runs
    return out
