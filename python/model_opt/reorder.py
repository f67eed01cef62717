"""Run a training step with its operators reordered for a lower memory peak.

``optimize`` captures one step (see `model_opt.capture`), asks the Rust scheduler for the order with
the lowest peak of live bytes, rewrites the FX graph in that order, and returns a callable that runs
the rewritten step on the real model and optimizer. The reordered step computes exactly what the
captured one computes — only the order of independent operators changes — so losses and updated
parameters match eager.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import fx, nn

from model_opt._native import schedule_graph, simulate_order
from model_opt.capture import (
    CapturedStep,
    DataflowGraph,
    LossFn,
    Tensors,
    _as_tuple,
    capture_inference_step,
    capture_training_step,
)


def reorder_graph(gm: fx.GraphModule, dataflow: DataflowGraph, order: Sequence[int]) -> fx.GraphModule:
    """A copy of ``gm`` whose operators run in ``order`` (indices into ``dataflow.ops``); each operator's
    tuple unpacking follows it directly; placeholders and constants stay first, the output last. FX's
    code generator drops each value after its last use, so the new order's lifetimes are the ones the
    scheduler simulated."""
    ops = dataflow.ops
    if sorted(order) != list(range(len(ops))):
        raise ValueError("the order must be a permutation of the graph's operators")
    new_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    output_node = None
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            env[node] = new_graph.node_copy(node, lambda n: env[n])
        elif node.op == "output":
            output_node = node
    for i in order:
        for node in [ops[i], *dataflow.unpacks.get(i, [])]:
            try:
                env[node] = new_graph.node_copy(node, lambda n: env[n])
            except KeyError as e:
                raise ValueError(f"the order runs {node.name} before its input {e.args[0]}") from None
    if output_node is not None:
        new_graph.node_copy(output_node, lambda n: env[n])
    new_graph.lint()
    return fx.GraphModule(gm, new_graph)


def schedule_captured(
    captured: CapturedStep, method: str = "auto", time_limit: float = 10.0, gap: float = 0.0
) -> tuple[fx.GraphModule, dict[str, Any]]:
    """Schedules a captured step and returns the reordered graph module and the scheduler's report
    (eager_peak_bytes, peak_bytes, lower_bound_bytes, solve_seconds, method, status, num_ops, ...)."""
    df = captured.dataflow
    num_ops, tensors, edges, resident = df.native_args()
    result = schedule_graph(num_ops, tensors, edges, resident, method=method, time_limit=time_limit, gap=gap)
    order = list(result["order"])  # type: ignore[call-overload]
    gm = reorder_graph(captured.graph_module, df, order)
    report: dict[str, Any] = {
        "eager_peak_bytes": int(result["eager_peak"]),  # type: ignore[call-overload]
        "peak_bytes": int(result["peak"]),  # type: ignore[call-overload]
        "lower_bound_bytes": int(result["lower_bound"]),  # type: ignore[call-overload]
        "solve_seconds": float(result["seconds"]),  # type: ignore[arg-type]
        "method": result["method"],
        "status": result["status"],
        # Relative distance to the lower bound: 0 means proven optimal.
        "gap": (int(result["peak"]) - int(result["lower_bound"])) / max(int(result["peak"]), 1),  # type: ignore[call-overload]
        "num_ops": num_ops,
        "num_tensors": len(tensors),
        "resident_bytes": resident,
        "order": order,
    }
    return gm, report


def peak_of_order(captured: CapturedStep, order: Sequence[int]) -> int:
    """Simulated peak live bytes of running the captured step in ``order``."""
    num_ops, tensors, edges, resident = captured.dataflow.native_args()
    return max(simulate_order(num_ops, tensors, edges, list(order), resident), default=resident)


class ReorderedStep:
    """One training step with reordered operators. Call it as ``step(inputs, targets)``; it updates
    the model's parameters, buffers and the optimizer state in place and returns the loss (detached).

    ``report`` describes the schedule; ``graph_module`` is the reordered FX graph (for inspection, or to
    run under the allocator runtime like any other step)."""

    def __init__(self, captured: CapturedStep, graph_module: fx.GraphModule, report: dict[str, Any]):
        self.captured = captured
        self.graph_module = graph_module
        self.report = report

    def _check(self, inputs: tuple[torch.Tensor, ...], targets: tuple[torch.Tensor, ...]) -> None:
        placeholders = [n for n in self.graph_module.graph.nodes if n.op == "placeholder"]
        expected = placeholders[len(self.captured.state_args) :]
        given = list(inputs) + list(targets)
        if len(given) != len(expected):
            raise ValueError(
                f"the step was captured with {len(expected)} inputs and targets, got {len(given)}"
            )
        for node, t in zip(expected, given):
            val = node.meta.get("val")
            if val is not None and (tuple(val.shape) != tuple(t.shape) or val.dtype != t.dtype):
                raise ValueError(
                    f"the step was captured for shape {tuple(val.shape)} {val.dtype}, got {tuple(t.shape)} "
                    f"{t.dtype}: call optimize() again with an example of this shape (e.g. the last batch)"
                )

    def __call__(self, inputs: Tensors, targets: Tensors) -> torch.Tensor:
        xs, ys = _as_tuple(inputs), _as_tuple(targets)
        self._check(xs, ys)
        with torch.no_grad():
            return self.graph_module(*self.captured.state_args, *xs, *ys)


def optimize(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    example_inputs: Tensors,
    example_targets: Tensors,
    time_limit: float = 10.0,
    method: str = "auto",
    gap: float = 0.0,
) -> ReorderedStep:
    """Captures one training step, schedules it for the lowest memory peak, and returns the step.

    Args:
        model: an unmodified ``nn.Module`` (its train/eval mode at capture time is the one traced).
        optimizer: ``torch.optim.SGD``, ``Adam`` or ``AdamW`` over the model's parameters; its state
            is created now if it has not stepped yet.
        loss_fn: ``loss_fn(model(*inputs), targets) -> scalar tensor``.
        example_inputs, example_targets: a tensor or a tuple of tensors with the shapes and dtypes of
            every later call (they are only traced, under fake tensors: no compute).
        time_limit: seconds the scheduler may spend.
        method: one of `model_opt.SCHEDULE_METHODS` ("auto" = heuristics, then the MODel ILP).
        gap: relative MIP gap at which the ILP may stop.

    Returns:
        A `ReorderedStep`; ``step(inputs, targets)`` runs one step and returns the loss, and
        ``step.report`` has eager_peak_bytes, peak_bytes, lower_bound_bytes, solve_seconds, method,
        status (and capture_seconds, num_ops, resident_bytes, order).
    """
    started = time.perf_counter()
    captured = capture_training_step(model, optimizer, loss_fn, example_inputs, example_targets)
    capture_seconds = time.perf_counter() - started
    gm, report = schedule_captured(captured, method=method, time_limit=time_limit, gap=gap)
    report["capture_seconds"] = capture_seconds
    return ReorderedStep(captured, gm, report)


def optimize_inference(
    model: nn.Module,
    example_inputs: Tensors,
    time_limit: float = 10.0,
    method: str = "auto",
    gap: float = 0.0,
) -> ReorderedStep:
    """Like `optimize` for a forward pass without gradients; call the result as ``step(inputs, ())``
    — it returns the model's output."""
    started = time.perf_counter()
    captured = capture_inference_step(model, example_inputs)
    capture_seconds = time.perf_counter() - started
    gm, report = schedule_captured(captured, method=method, time_limit=time_limit, gap=gap)
    report["capture_seconds"] = capture_seconds
    return ReorderedStep(captured, gm, report)


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
    graph_module: fx.GraphModule, captured: CapturedStep, inputs: Tensors, targets: Tensors = ()
) -> int:
    """Runs ``graph_module`` (the captured graph or a reordering of it) once for real and returns the
    peak bytes of the tensors it allocated, plus the bytes resident before it — the quantity the
    simulated peaks estimate. The step's updates are applied as usual."""
    xs, ys = _as_tuple(inputs), _as_tuple(targets)
    tracker = _LiveBytes([*captured.state_args, *xs, *ys])
    with torch.no_grad(), tracker:
        out = graph_module(*captured.state_args, *xs, *ys)
    del out
    return int(captured.dataflow.resident_bytes + tracker.peak)
