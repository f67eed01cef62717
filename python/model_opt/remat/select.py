"""The choice of recomputations and spills as a 0/1 program on HiGHS, for the order the graph is in.

Every way of freeing a value over a gap between two of its uses is a candidate: recompute it before the
use after the gap (its unit, `model_opt.remat.recompute`, with the inputs that are dead by then kept
alive until it runs), or spill it to host memory over the gap. Each has a cost (operations; a spill's
moves priced by `spill_cost`) and effects on the live bytes of the steps (in operator positions): minus
the value's bytes over the gap, plus the kept inputs' bytes. `model_opt._native.select_frees` chooses
among them (at most one per producer): the least cost under a budget, or the least peak within the
allowance, with HiGHS's bound and status. The chosen are then made through the same rewrites as the
greedy search's choices (`model_opt.remat.search`), which goes on from there (segments, which the program
does not model).

The program's live bytes are a model: a copy recomputed from inputs that were themselves freed reads
their copies, and a unit's own temporaries are not counted. The rewritten graph is simulated afresh;
what the program claims is reported beside what the simulation finds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from model_opt._native import select_frees
from model_opt.capture.dataflow import DataflowGraph
from model_opt.remat.cost import node_flops
from model_opt.remat.recompute import storages_of
from model_opt.remat.rewrite import GraphFacts, holder, unit_at

Effects = list[tuple[int, int, int]]
#: (cost, group, [(start, end, bytes), ...], [excluded candidates], [(other, effects when both)]): a
#: candidate as `select_frees` takes it.
Native = tuple[float, int, Effects, list[int], list[tuple[int, Effects]]]


@dataclass(frozen=True)
class Choice:
    """A candidate by names: what `model_opt.remat.search` needs to make it (a `RematStep`)."""

    kind: str  # "recompute" or "spill"
    producer: str
    #: The node right after the gap's start (the step's "peak": uses before it are early, after late).
    peak: str
    cost: int
    #: Bytes freed over the gap.
    freed: int


@dataclass
class Selected:
    """What the program chose and knows."""

    choices: list[Choice] = field(default_factory=list)
    #: "optimal", "time_limit", "infeasible" (no choice meets the budget), "feasible".
    status: str = ""
    #: A proven lower bound, over these candidates in this order: on the cost under a budget, on the
    #: peak otherwise.
    bound: float = 0.0
    #: The peak the program's model gives the choice.
    modeled_peak: int = 0
    candidates: int = 0
    goal: str = ""
    seconds: float = 0.0


def candidates(
    df: DataflowGraph,
    facts: GraphFacts,
    recompute: bool,
    spill_price: Callable[[int], int] | None,
    min_bytes: int,
) -> tuple[list[Native], list[Choice]]:
    """Every candidate of ``df`` in its order (see the module doc), for values of ``min_bytes`` or more,
    by the tests the greedy search applies (`unit_at`, `holder`)."""
    last: dict[object, int] = {}
    sizes: dict[object, int] = {}
    n = len(df.ops)
    for key, (size, producer, consumers, output) in zip(df.tensor_keys, df.tensors):
        last[key.cdata] = n if output else max([producer, *consumers])
        sizes[key.cdata] = size
    native: list[Native] = []
    named: list[Choice] = []
    # Per candidate: the storage it frees and its gap; per recomputation: its inputs and when it runs.
    frees: dict[object, list[tuple[int, int, int]]] = {}
    reads: list[tuple[int, dict[object, int], int]] = []
    for key, (size, producer, consumers, output) in zip(df.tensor_keys, df.tensors):
        if output or size < min_bytes:
            continue
        uses = sorted({producer, *consumers})
        node = df.ops[producer]
        for a, b in zip(uses, uses[1:]):
            if b - a < 2:
                continue
            peak = df.ops[a + 1]
            at, first = facts.pos[peak], facts.pos[df.ops[b]]
            freed = [(a + 1, b, -size)]
            if spill_price is not None:
                value = holder(df, producer, key.cdata)
                if value is not None and facts.pos[value] < at:
                    cost = spill_price(size)
                    frees.setdefault(key.cdata, []).append((len(native), a + 1, b))
                    native.append((float(cost), producer, freed, [], []))
                    named.append(Choice("spill", value.name, peak.name, cost, size))
            if not recompute or facts.pos[node] >= at:
                continue
            unit = unit_at(node, facts, at, first)
            if unit is None:
                continue
            kept: list[tuple[int, int, int]] = []
            inputs: set[object] = set()
            for x in unit.inputs:
                if x.op in ("placeholder", "get_attr"):
                    continue
                inputs.update(storages_of(x))
                if facts.live_at(x, first):
                    continue
                for k in storages_of(x):
                    end = last.get(k)
                    if end is not None and end + 1 < b:
                        kept.append((end + 1, b, sizes[k]))
            cost = sum(node_flops(m) for m in unit.nodes)
            frees.setdefault(key.cdata, []).append((len(native), a + 1, b))
            reads.append((len(native), {k: sizes[k] for k in inputs if k in sizes}, b))
            native.append((float(cost), producer, freed + kept, [], []))
            named.append(Choice("recompute", node.name, peak.name, cost, size))
    # A recomputation that runs while one of its inputs is freed reads that input's copy, made (moved
    # up) right before it: when both are chosen, the copy is live from then until its own use.
    for c, inputs, runs in reads:
        for k, size in inputs.items():
            for d, start, end in frees.get(k, ()):
                if start <= runs < end:
                    native[c][4].append((d, [(runs, end, size)]))
    return native, named


def select(
    profile: list[int],
    native: list[Native],
    named: list[Choice],
    budget: int | None,
    allowance: float | None,
    time_limit: float,
) -> Selected:
    """Solves the program: under ``budget`` when one is given (and met by some choice), else the least
    peak within ``allowance``."""
    started = time.perf_counter()
    goal = "budget"
    answer = select_frees(profile, native, budget=budget, allowance=allowance, time_limit=time_limit)
    if budget is not None and answer["status"] == "infeasible":
        goal = "least peak (no choice meets the budget)"
        left = max(0.0, time_limit - (time.perf_counter() - started))
        answer = select_frees(profile, native, allowance=allowance, time_limit=left)
    elif budget is None:
        goal = "least peak"
    return Selected(
        choices=[named[i] for i in answer["chosen"]],
        status=answer["status"],
        bound=answer["bound"],
        modeled_peak=answer["peak_bytes"],
        candidates=len(native),
        goal=goal,
        seconds=time.perf_counter() - started,
    )
