"""How one captured step is planned: the order of its operators and, under a memory budget, what it
recomputes or spills.

`schedule_captured` asks the Rust scheduler for the order with the lowest simulated peak and rewrites
the FX graph in it. `plan_captured` goes further when the options allow: if the order alone does not
bring the peak under the budget (or, with no budget, to get the least peak the allowance buys),
`model_opt.remat` frees activations live at the peak and recomputes them before their late uses, or
copies them to host memory and fetches them back ("spill"), then the rewritten step is scheduled
again. A budget that cannot be met raises
`MemoryBudgetError` with the smallest peak reached and what holds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

from torch import fx

from model_opt._native import schedule_graph, simulate_order
from model_opt.capture.dataflow import DataflowGraph
from model_opt.capture.step import CapturedStep
from model_opt.errors import ArgumentError, MemoryBudgetError
from model_opt.sizes import parse_memory

#: The transformations `plan_captured` may use.
TRANSFORMS = ("reorder", "remat", "spill")


def reorder_graph(gm: fx.GraphModule, dataflow: DataflowGraph, order: Sequence[int]) -> fx.GraphModule:
    """A copy of ``gm`` whose operators run in ``order`` (indices into ``dataflow.ops``); each operator's
    tuple unpacking follows it directly; placeholders and constants stay first, the output last. FX's
    code generator drops each value after its last use, so the new order's lifetimes are the ones the
    scheduler simulated."""
    ops = dataflow.ops
    if sorted(order) != list(range(len(ops))):
        raise ArgumentError("the order must be a permutation of the graph's operators")
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
                raise ArgumentError(f"the order runs {node.name} before its input {e.args[0]}") from None
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
    order = result["order"]
    gm = reorder_graph(captured.graph_module, df, order)
    report: dict[str, Any] = {
        "eager_peak_bytes": result["eager_peak_bytes"],
        "peak_bytes": result["peak_bytes"],
        "lower_bound_bytes": result["lower_bound_bytes"],
        "solve_seconds": result["seconds"],
        "method": result["method"],
        "status": result["status"],
        # Relative distance to the lower bound: 0 means proven optimal.
        "gap": (result["peak_bytes"] - result["lower_bound_bytes"]) / max(result["peak_bytes"], 1),
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


@dataclass(frozen=True)
class PlanOptions:
    """What `plan_captured` may do and for how long (see `model_opt.reorder.optimize`)."""

    method: str = "auto"
    time_limit: float = 10.0
    gap: float = 0.0
    #: Bytes the step's simulated peak must fit in, or None.
    memory_budget: int | None = None
    allow: tuple[str, ...] = ("reorder",)
    #: The extra cost (recomputed operations, spills' moves) at most this fraction of the step's
    #: operations (None: no limit).
    max_recompute: float | None = 0.2
    #: Host-device bandwidth (bytes/s) that prices a spill (`model_opt.remat.search.spill_cost`).
    host_bandwidth: float = 25e9
    #: How the recomputations and spills are chosen: "greedy", or "ilp" (`model_opt.remat.select`).
    remat_method: str = "greedy"

    @classmethod
    def of(
        cls,
        *,
        method: str = "auto",
        time_limit: float = 10.0,
        gap: float = 0.0,
        memory_budget: int | str | None = None,
        allow: Sequence[str] | str = ("reorder",),
        max_recompute: float | None = 0.2,
        host_bandwidth: float = 25e9,
        remat_method: str = "greedy",
    ) -> PlanOptions:
        """Checked options: the budget parsed (``"12GiB"`` or bytes), ``allow`` known."""
        allowed = (allow,) if isinstance(allow, str) else tuple(allow)
        unknown = [a for a in allowed if a not in TRANSFORMS]
        if unknown:
            raise ArgumentError(
                f"allow: unknown transformation {unknown[0]!r}; known: {', '.join(TRANSFORMS)}"
            )
        if (
            isinstance(host_bandwidth, bool)
            or not isinstance(host_bandwidth, (int, float))
            or not 0 < host_bandwidth < float("inf")
        ):
            raise ArgumentError(
                f"host_bandwidth must be a positive number of bytes per second; got {host_bandwidth!r}"
            )
        if max_recompute is not None and (
            isinstance(max_recompute, bool)
            or not isinstance(max_recompute, (int, float))
            or not max_recompute >= 0
        ):
            raise ArgumentError(
                f"max_recompute must be a fraction of at least 0 (0.2 = 20%), or None; got {max_recompute!r}"
            )
        if not time_limit >= 0:
            raise ArgumentError(f"time_limit must be at least 0 seconds, got {time_limit}")
        budget = None if memory_budget is None else parse_memory(memory_budget)
        from model_opt.remat.search import METHODS

        if remat_method not in METHODS:
            raise ArgumentError(f"remat_method: unknown {remat_method!r}; known: {', '.join(METHODS)}")
        return cls(
            method, time_limit, gap, budget, allowed, max_recompute, float(host_bandwidth), remat_method
        )


def _in_order(captured: CapturedStep) -> tuple[fx.GraphModule, dict[str, Any]]:
    """The captured graph as it is, with the report `schedule_captured` would give for its own order."""
    peak = peak_of_order(captured, range(len(captured.dataflow.ops)))
    report: dict[str, Any] = {
        "eager_peak_bytes": peak,
        "peak_bytes": peak,
        "lower_bound_bytes": None,
        "solve_seconds": 0.0,
        "method": "none",
        "status": "not reordered",
        "gap": None,
        "num_ops": len(captured.dataflow.ops),
        "num_tensors": len(captured.dataflow.tensors),
        "resident_bytes": captured.dataflow.resident_bytes,
        "order": list(range(len(captured.dataflow.ops))),
    }
    return captured.graph_module, report


def _order(captured: CapturedStep, options: PlanOptions) -> tuple[fx.GraphModule, dict[str, Any]]:
    if "reorder" not in options.allow:
        return _in_order(captured)
    return schedule_captured(captured, method=options.method, time_limit=options.time_limit, gap=options.gap)


def plan_captured(
    captured: CapturedStep, options: PlanOptions, progress: Callable[[int, int], None] | None = None
) -> tuple[CapturedStep, fx.GraphModule, dict[str, Any]]:
    """Plans ``captured`` as the module doc says. Returns the step to run (``captured`` itself, or its
    rewriting with recomputations), the graph module in the chosen order, and the report: the
    scheduler's keys, plus ``memory_budget`` and ``remat`` (None when neither "remat" nor "spill" was
    allowed or needed, else ``recomputed`` (operator names), ``chained`` (operators recomputed before
    those because they read them), ``spilled`` (values spilled to host memory) and ``spilled_bytes``,
    ``extra_compute`` (recomputed share of the step's operations), ``extra_cost`` (with the spills'
    moves), ``start_peak_bytes``, ``stopped``, ``seconds``, and ``program``: with
    ``remat_method="ilp"``, what the 0/1 program chose and knew, else None). Raises `MemoryBudgetError`."""
    gm, report = _order(captured, options)
    eager_peak = report["eager_peak_bytes"]
    budget = options.memory_budget
    report["memory_budget"] = budget
    report["remat"] = None
    over = budget is not None and report["peak_bytes"] > budget
    freeing = {"remat", "spill"} & set(options.allow)
    if freeing and (budget is None or over):
        from model_opt.remat.search import held_by, rematerialize

        result = rematerialize(
            gm,
            budget=budget,
            max_recompute=options.max_recompute,
            time_limit=options.time_limit,
            progress=progress,
            recompute="remat" in freeing,
            spill="spill" in freeing,
            host_bandwidth=options.host_bandwidth,
            method=options.remat_method,
        )
        if result.steps:
            captured = CapturedStep(result.graph_module, result.dataflow, captured.binding)
            gm, report2 = _order(captured, options)
            if report2["peak_bytes"] > result.peak_bytes:  # keep the order remat chose
                gm, report2 = _in_order(captured)
            report2["eager_peak_bytes"] = eager_peak
            report2["memory_budget"] = budget
            report = report2
        report["remat"] = {
            "recomputed": result.recomputed,
            "chained": result.chained,
            "spilled": result.spilled,
            "spilled_bytes": result.spilled_bytes,
            "extra_compute": result.extra_compute,
            "extra_cost": result.extra_cost,
            "recompute_flops": result.recompute_flops,
            "spill_flops": result.spill_flops,
            "step_flops": result.step_flops,
            "start_peak_bytes": result.start_peak_bytes,
            "stopped": result.stopped,
            # What holds the peak of the order that runs (the message describes it).
            "held_by": "" if result.stopped == "budget met" else held_by(captured.dataflow, report["order"]),
            "seconds": result.seconds,
            "program": result.program,
        }
    if budget is not None and report["peak_bytes"] > budget:
        raise MemoryBudgetError(_budget_message(budget, report, options))
    return captured, gm, report


def _budget_message(budget: int, report: dict[str, Any], options: PlanOptions) -> str:
    peak = report["peak_bytes"]
    said = (
        f"the step's peak cannot be brought under the memory budget of {budget} bytes: "
        f"the least found is {peak} bytes"
    )
    remat = report.get("remat")
    if not {"remat", "spill"} & set(options.allow):
        bound = report.get("lower_bound_bytes")
        proven = f" (no order can go below {bound} bytes)" if bound is not None else ""
        return f"{said} by reordering alone{proven}; allow recomputation: allow=('reorder', 'remat')"
    why = remat["held_by"] if remat else ""
    if remat and remat["stopped"] == "allowance spent":
        hint = f"; the recompute allowance is spent (max_recompute={options.max_recompute}): raise it"
    elif remat and remat["stopped"] == "time limit":
        hint = f"; the search ran out of time (time_limit={options.time_limit}): raise it"
    else:
        ways = " or spill" if "spill" in options.allow else ""
        hint = f", and no faithful recomputation{ways} frees more of them"
    return f"{said}, {why}{hint}"
