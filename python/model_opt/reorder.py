"""Run a training step with its operators reordered for a lower memory peak.

``optimize`` captures one step (see `model_opt.capture.dataflow`), asks the Rust scheduler for the order with
the lowest peak of live bytes, rewrites the FX graph in that order, and returns a callable that runs
the rewritten step on the real model and optimizer. The reordered step computes exactly what the
captured one computes — only the order of independent operators changes — so losses and updated
parameters match eager. With ``allow=("reorder", "remat")`` and a memory budget, the step may also
recompute activations (`model_opt.step_plan`, `model_opt.remat`): only deterministic operators, so it
still computes bit for bit what eager computes.
"""

from __future__ import annotations

import time
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import fx, nn

from model_opt.capture.dataflow import Tensors, storage_bytes
from model_opt.capture.discover import state_of
from model_opt.capture.guards import Context, context_of, describe_change
from model_opt.capture.step import CapturedStep, StepState, capture_step, forward_step, model_step
from model_opt.errors import ArgumentError
from model_opt.remat.host import SPILL
from model_opt.step_plan import PlanOptions, peak_of_order, plan_captured, reorder_graph, schedule_captured

__all__ = [
    "OptimizedStep",
    "PlanOptions",
    "measure_peak_bytes",
    "optimize",
    "optimize_inference",
    "optimizer_state_bytes",
    "peak_of_order",
    "reorder_graph",
    "schedule_captured",
]


@dataclass
class _Schedule:
    """One captured context: the captured step, its reordered graph, and the scheduler's report."""

    captured: CapturedStep
    graph_module: fx.GraphModule
    report: dict[str, Any]


class OptimizedStep:
    """A training-step function with its operators reordered for a lower memory peak.

    Call it exactly as the function: ``step(*args, **kwargs)`` runs one step on the real model and
    optimizer (parameters, buffers, optimizer state and ``.grad`` end as the eager call leaves them)
    and returns what the function returns (tensors detached). Each call's context
    (`model_opt.capture.guards`) picks the schedule captured for it; a context seen for the first
    time is captured and scheduled then, like ``torch.compile``'s recompiles, up to ``max_captures``
    contexts; calls beyond run the function eagerly (with one warning), never a schedule captured for
    another context.

    ``report`` is the latest schedule's report (eager_peak_bytes, peak_bytes, lower_bound_bytes,
    solve_seconds, method, status, capture_seconds, num_ops, resident_bytes, order, memory_budget,
    remat: see `model_opt.step_plan.plan_captured`) plus the counters
    ``calls``, ``captures``, ``eager_calls`` and ``recaptures`` (one entry per capture after the first:
    what changed, and the seconds it took), and ``optimizer_state_bytes``: the optimizers' state now.
    The optimizer's state is its own, outside the graph (its ``step()`` runs as an operator and creates
    the state at its first call), so the peaks leave it out: it adds the same bytes to every order.
    ``captured`` and ``graph_module`` are the latest schedule's.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        modules: Sequence[nn.Module],
        optimizers: Sequence[torch.optim.Optimizer],
        *,
        time_limit: float = 10.0,
        method: str = "auto",
        gap: float = 0.0,
        max_captures: int = 8,
        options: PlanOptions | None = None,
    ) -> None:
        if max_captures < 1:
            raise ArgumentError(f"max_captures must be at least 1, got {max_captures}")
        self.fn = fn
        self.modules = list(modules)
        self.optimizers = list(optimizers)
        self.options = options or PlanOptions.of(method=method, time_limit=time_limit, gap=gap)
        self.max_captures = max_captures
        self._schedules: dict[Context, _Schedule] = {}
        self._latest: _Schedule | None = None
        self._last_context: Context | None = None
        self._counters: dict[str, Any] = {"calls": 0, "captures": 0, "eager_calls": 0, "recaptures": []}
        self._warned = False

    @property
    def report(self) -> dict[str, Any]:
        base = dict(self._latest.report) if self._latest else {}
        return {**base, **self._counters, "optimizer_state_bytes": optimizer_state_bytes(self.optimizers)}

    @property
    def captured(self) -> CapturedStep:
        if self._latest is None:
            raise RuntimeError("the step has not been captured yet")
        return self._latest.captured

    @property
    def graph_module(self) -> fx.GraphModule:
        return self._latest_schedule().graph_module

    def _latest_schedule(self) -> _Schedule:
        if self._latest is None:
            raise RuntimeError("the step has not been captured yet")
        return self._latest

    def _context(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[StepState, Context]:
        state = StepState.of(self.modules, self.optimizers)
        return state, context_of(args, kwargs, state)

    def capture(self, *args: Any, **kwargs: Any) -> _Schedule:
        """Captures and schedules the function for the context of ``fn(*args, **kwargs)`` without running
        it (``optimize`` does this with the example arguments). Raises `CaptureError`."""
        state, context = self._context(args, kwargs)
        return self._schedule_for(state, context, args, kwargs)

    def _schedule_for(
        self, state: StepState, context: Context, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> _Schedule:
        found = self._schedules.get(context)
        if found is not None:
            return found
        started = time.perf_counter()
        captured = capture_step(self.fn, args, kwargs, state)
        capture_seconds = time.perf_counter() - started
        captured, gm, report = plan_captured(captured, self.options)
        report["capture_seconds"] = capture_seconds
        if self._last_context is not None:
            self._counters["recaptures"].append(
                {
                    "reason": describe_change(self._last_context, context),
                    "seconds": time.perf_counter() - started,
                }
            )
        self._counters["captures"] += 1
        schedule = _Schedule(captured, gm, report)
        self._schedules[context] = schedule
        self._last_context = context
        return schedule

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._counters["calls"] += 1
        state, context = self._context(args, kwargs)
        if context not in self._schedules and len(self._schedules) >= self.max_captures:
            if not self._warned:
                warnings.warn(
                    f"model_opt: the step has been captured for {self.max_captures} contexts; this call's "
                    f"context is new ({describe_change(self._last_context or context, context)} changed), so "
                    "it and later new contexts run eagerly (raise max_captures to capture more)",
                    stacklevel=2,
                )
                self._warned = True
            self._counters["eager_calls"] += 1
            return self.fn(*args, **kwargs)
        schedule = self._schedule_for(state, context, args, kwargs)
        self._latest, self._last_context = schedule, context
        return schedule.captured.run(schedule.graph_module, *args, **kwargs)


def optimizer_state_bytes(optimizers: Sequence[torch.optim.Optimizer]) -> int:
    """Bytes of the storages the optimizers' state holds (each storage once)."""
    return storage_bytes(
        v
        for opt in optimizers
        for state in opt.state.values()
        for v in state.values()
        if isinstance(v, torch.Tensor)
    )


#: The name of `OptimizedStep` before step functions (kept for existing code).
ReorderedStep = OptimizedStep


def optimize(
    fn: Callable[..., Any] | nn.Module,
    *example_args: Any,
    time_limit: float = 10.0,
    method: str = "auto",
    gap: float = 0.0,
    modules: Sequence[nn.Module] | None = None,
    optimizers: Sequence[torch.optim.Optimizer] | None = None,
    max_captures: int = 8,
    memory_budget: int | str | None = None,
    allow: Sequence[str] | str = ("reorder",),
    max_recompute: float | None = 0.2,
    host_bandwidth: float = 25e9,
    remat_method: str = "greedy",
    **example_kwargs: Any,
) -> OptimizedStep:
    """Captures a training step, schedules it for the lowest memory peak, and returns the step.

    Two forms::

        step = optimize(train_step, x0, y0)                       # any step function, like torch.compile
        step = optimize(model, optimizer, loss_fn, x0, y0)        # shorthand: forward, loss, backward, step

    ``train_step`` is the user's own function (forward, ``loss.backward()``, clipping, ``optimizer.step()``,
    ``zero_grad``, any of these) with example arguments of a call: tensors, or tuples, lists and dicts
    of them (``model(**batch)`` inside works), and numbers. They are only traced, under fake tensors:
    nothing runs. The shorthand builds ``train_step(inputs, targets)`` (zero_grad, forward, loss,
    backward, ``optimizer.step()``, zero_grad) and is called as ``step(inputs, targets)``.

    Args:
        fn: the step function, or a model for the shorthand form.
        example_args, example_kwargs: a call's arguments, for the first capture. Keyword arguments named
            like the options below cannot be passed this way.
        time_limit: seconds the scheduler may spend per capture.
        method: one of `model_opt.SCHEDULE_METHODS` ("auto" = heuristics, then the MODel ILP).
        gap: relative MIP gap at which the ILP may stop.
        modules, optimizers: what the function uses; by default found from the function
            (`model_opt.capture.discover.find_state`: its closure, the globals it names, bound objects).
        max_captures: contexts (input shapes, autocast, train/eval ...) captured at most; further new
            contexts run eagerly.
        memory_budget: bytes (or ``"12GiB"``) the step's simulated peak must fit in: parameters,
            buffers, inputs, activations and gradients; the optimizer's state is outside the step (see
            `OptimizedStep`). None: the least peak that ``allow`` and ``max_recompute`` reach.
        allow: what may be done to meet it: ``"reorder"`` (the order of independent operators),
            ``"remat"`` (free activations live at the peak, recompute them before their later uses:
            `model_opt.remat`; deterministic ``aten`` operators, and random fills replayed from the
            generator state they drew from) and ``"spill"`` (copy activations live at the peak to
            host memory, fetch them back before their later uses: `model_opt.remat.host`; pinned
            memory and a copy stream on CUDA, memory outside the arena on CPU).
        max_recompute: with ``"remat"`` or ``"spill"``, the extra cost at most this fraction of the
            step's operations (None: no limit): recomputed operations, and each spill's two moves
            priced as the operations the device could run meanwhile
            (`model_opt.remat.search.spill_cost`).
        host_bandwidth: bytes per second between device and host memory, which prices a spill
            (25e9: PCIe 4.0 x16 in practice).
        remat_method: how recomputations and spills are chosen: ``"greedy"`` (rounds at the current
            peak), or ``"ilp"``: also a 0/1 program on HiGHS over every value and gap for the order
            (`model_opt.remat.select`), then greedy rounds from its choice; the better of the two is
            kept, and ``report["remat"]["program"]`` gives the program's status and bound.

    Returns:
        An `OptimizedStep`.

    Raises:
        CaptureError: the step cannot be captured faithfully (a data-parallel wrapper, ``.item()`` or
            other data-dependent Python, reseeding, an optimizer step with a closure ...); the message
            says what and why.
        MemoryBudgetError: no plan allowed brings the peak under ``memory_budget``; the message gives
            the least peak found and what holds it.
        ArgumentError: an unknown ``allow``, a bad budget, allowance or bandwidth.
    """
    options = PlanOptions.of(
        method=method,
        time_limit=time_limit,
        gap=gap,
        memory_budget=memory_budget,
        allow=allow,
        max_recompute=max_recompute,
        host_bandwidth=host_bandwidth,
        remat_method=remat_method,
    )
    if isinstance(fn, nn.Module):
        if len(example_args) != 4 or example_kwargs:
            raise TypeError(
                "optimize(model, optimizer, loss_fn, example_inputs, example_targets): expected 4 "
                f"arguments after the model, got {len(example_args)}"
            )
        optimizer, loss_fn, inputs, targets = example_args
        found_modules = [fn, *([loss_fn] if isinstance(loss_fn, nn.Module) else [])]
        step_fn: Callable[..., Any] = model_step(fn, optimizer, loss_fn)
        modules, optimizers = modules or found_modules, optimizers or [optimizer]
        example_args = (inputs, targets)
    else:
        if not callable(fn):
            raise TypeError(f"optimize() takes a step function or a model, got {type(fn).__name__}")
        step_fn = fn
        modules, optimizers = state_of(fn, modules, optimizers)
    step = OptimizedStep(step_fn, modules, optimizers, max_captures=max_captures, options=options)
    step._latest = step.capture(*example_args, **example_kwargs)
    return step


def optimize_inference(
    model: nn.Module,
    example_inputs: Tensors,
    time_limit: float = 10.0,
    method: str = "auto",
    gap: float = 0.0,
) -> OptimizedStep:
    """Like `optimize` for a forward pass without gradients; call the result as ``step(inputs)`` — it
    returns the model's output."""

    step = OptimizedStep(forward_step(model), [model], [], time_limit=time_limit, method=method, gap=gap)
    step._latest = step.capture(example_inputs)
    return step


class _LiveBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the bytes of storages created while it is active and still referenced, and their peak.

    A storage is live while any tensor created on it (an op's output, a view of it) is alive: each
    tensor gets a finalizer, and the storage is counted out when its last tensor dies. This measures
    what really happens when a graph runs (FX's generated code drops each value after its last use)."""

    def __init__(self, existing: Sequence[torch.Tensor] = ()) -> None:
        super().__init__()
        # Storages that exist before the step (views of parameters allocate nothing).
        self._existing = {t.untyped_storage().data_ptr() for t in existing}
        self.live = 0
        self.peak = 0
        self._refs: dict[int, list[int]] = {}  # data_ptr -> [tensor count, nbytes]

    def _dead(self, ptr: int) -> None:
        entry = self._refs[ptr]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._refs[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if func is SPILL:
            return out  # a host copy: no device bytes (as the simulation counts it)
        for t in torch.utils._pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
                continue
            storage = t.untyped_storage()
            ptr, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or ptr in self._existing:
                continue
            if ptr not in self._refs:
                self._refs[ptr] = [0, nbytes]
                self.live += nbytes
                self.peak = max(self.peak, self.live)
            self._refs[ptr][0] += 1
            weakref.finalize(t, self._dead, ptr)
        return out


def measure_peak_bytes(
    graph_module: fx.GraphModule, captured: CapturedStep, *args: Any, **kwargs: Any
) -> int:
    """Runs ``graph_module`` (the captured graph or a reordering of it) once for real on a call's
    arguments and returns the peak bytes of the tensors it allocated, plus the bytes resident before it —
    the quantity the simulated peaks estimate. The step's updates are applied as usual."""
    existing = [t for t in captured.binding.flat_args(args, kwargs) if isinstance(t, torch.Tensor)]
    tracker = _LiveBytes(existing)
    with tracker:
        out = captured.run(graph_module, *args, **kwargs)
    del out
    return int(captured.dataflow.resident_bytes + tracker.peak)
