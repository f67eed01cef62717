"""The greedy choice of what to recompute or spill: at the peak, the storage freed for the least cost.

One round: simulate the graph in its order, find the step where the most bytes are live, and list the
storages live there that could be dropped and rebuilt later — produced before the peak, read again only
after it, by a unit that can be recomputed faithfully (`model_opt.remat.recompute`) from inputs left
unchanged. Each candidate is priced: the bytes it frees at the peak, less the inputs it would keep alive
across the peak, per recomputed operation (`model_opt.remat.cost`). The best are applied to the graph in
place (a batch of them: doubled after a round that lowered the peak, or the number of steps at it;
halved after one that did not), the graph is re-simulated, and the batch is kept or undone. Rounds go on
until the budget is met, the recompute allowance is spent, no candidate helps, or the time is up.

With spilling allowed, a value live at the peak that is one whole storage may be copied to host memory
and fetched back instead (`model_opt.remat.host`): it frees its bytes and keeps nothing else alive,
priced by `spill_cost` in the same operations, so the two kinds compete in one ranking and one
allowance.

Two phases: the first recomputes single units, whose inputs must be kept alive if they are dead by
then; once nothing more helps, the second also recomputes such inputs first (a *segment*, as a
checkpointed block is recomputed from its input), up to `CHAIN_DEPTH` producers back.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import fx

from model_opt._native import simulate_order
from model_opt.capture.dataflow import DataflowGraph, build_dataflow
from model_opt.remat import select
from model_opt.remat.cost import node_flops, total_flops
from model_opt.remat.recompute import Unit, storages_of, view_root
from model_opt.remat.rewrite import (
    META,
    GraphFacts,
    RewriteRefused,
    UndoLog,
    copy_graph,
    holder,
    recompute_unit,
    spill_storage,
    spillable,
    unit_at,
)

#: The most candidates applied together in one round (see `rematerialize`).
MAX_BATCH = 64


@dataclass(frozen=True)
class RematStep:
    """One kept recomputation, by node names, so that it can be made again on another capture of the same
    step (`replay`): the operator recomputed, the operators recomputed before it (a segment's), the node
    at the peak it was chosen for, and its rewrite group."""

    producer: str
    chain: tuple[str, ...]
    #: The peak's node: its name, or for a copy an earlier rewrite made (whose name depends on the
    #: rewrites tried and undone before it), what it copies and its group (`_key`).
    peak: str | tuple[str, int]
    group: int
    #: "recompute", or "spill": ``producer``'s value copied to host memory and fetched back.
    kind: str = "recompute"


def _key(node: fx.Node) -> str | tuple[str, int]:
    """A name for ``node`` that a replay finds again: the node's own for a node of the capture, ``(what it
    copies, group)`` for a copy a rewrite added."""
    meta = node.meta.get(META)
    return node.name if meta is None else (meta[0], meta[1])


class RematReplayError(Exception):
    """A recorded recomputation does not apply to this graph (another structure than the one it was
    chosen on)."""


@dataclass
class RematResult:
    """What `rematerialize` did."""

    graph_module: fx.GraphModule
    dataflow: DataflowGraph
    #: Simulated peak (bytes) of the graph it started from, and of the result, in graph order.
    start_peak_bytes: int
    peak_bytes: int
    #: The operators recomputed (their names in the starting graph), in the order chosen.
    recomputed: list[str] = field(default_factory=list)
    #: Operators recomputed too, before those, because they read them and they were dead by then
    #: (a checkpointed segment's inner operators).
    chained: list[str] = field(default_factory=list)
    #: Operations of the recomputations, and of the whole step before them (`model_opt.remat.cost`).
    recompute_flops: int = 0
    step_flops: int = 0
    #: The values spilled to host memory and fetched back (their names in the starting graph), their
    #: bytes (each moved twice), and what the moves cost in operations (`spill_cost`).
    spilled: list[str] = field(default_factory=list)
    spilled_bytes: int = 0
    spill_flops: int = 0
    #: The kept recomputations in the order they were made (`replay` makes them again).
    steps: list[RematStep] = field(default_factory=list)
    #: With ``method="ilp"``: what the 0/1 program chose and knew (`model_opt.remat.select`): its
    #: ``goal``, ``status``, ``bound``, ``candidates``, ``chosen``, ``applied``, ``modeled_peak``, the
    #: ``simulated_peak`` of the graph with them made, ``seconds``, the ``final_peak`` once the greedy
    #: rounds went on from there, and whether that was ``kept`` over the greedy rounds alone; None
    #: otherwise.
    program: dict[str, Any] | None = None
    #: Why the search stopped: "budget met", "allowance spent", "no candidate", "time limit".
    stopped: str = ""
    seconds: float = 0.0

    @property
    def extra_compute(self) -> float:
        """Recomputed operations as a fraction of the step's."""
        return self.recompute_flops / max(self.step_flops, 1)

    @property
    def extra_cost(self) -> float:
        """Recomputed operations and the spills' moves (`spill_cost`), as a fraction of the step's
        operations."""
        return (self.recompute_flops + self.spill_flops) / max(self.step_flops, 1)


#: The stated rates that price a spill against a recomputation: host-device bandwidth (bytes/s, PCIe
#: 4.0 x16 in practice) and the device's operations per second (an H100-class GPU at a realistic
#: share of its bf16 peak). A spill moves its bytes twice; its cost counts as the operations the
#: device could have run meanwhile. An upper bound: the copy stream overlaps moves with compute.
HOST_BANDWIDTH = 25e9
DEVICE_FLOPS = 200e12


def spill_cost(
    nbytes: int, host_bandwidth: float = HOST_BANDWIDTH, device_flops: float = DEVICE_FLOPS
) -> int:
    """What spilling ``nbytes`` and fetching them back costs, in operations of the device."""
    return int(2 * nbytes / host_bandwidth * device_flops)


def _profile(df: DataflowGraph) -> list[int]:
    num_ops, tensors, edges, resident = df.native_args()
    if num_ops == 0:
        return [resident]
    return list(simulate_order(num_ops, tensors, edges, list(range(num_ops)), resident))


def _score(profile: list[int]) -> tuple[int, int]:
    peak = max(profile)
    return peak, sum(1 for x in profile if x == peak)


@dataclass
class _Candidate:
    #: The node recomputed (its unit's producer) or spilled.
    node: fx.Node
    cost: int
    net: int
    kind: str = "recompute"
    #: Units recomputed first because the unit reads them and they are dead by then (inputs first).
    chain: list[Unit] = field(default_factory=list)

    @property
    def key(self) -> str:
        """Its name in the search's set of refused candidates."""
        return self.node.name if self.kind == "recompute" else f"spill:{self.node.name}"


#: The least share of the peak a candidate must free to be tried.
MIN_NET = 1e-4

#: How many producers back a recomputed segment may reach for inputs that are dead at the peak, in the
#: search's second phase (the first recomputes single units only: segments chosen early can block
#: cheaper single recomputations later, and leave a higher peak).
CHAIN_DEPTH = 3


def _base(x: fx.Node) -> fx.Node:
    """The node that produced ``x``'s storage: views followed back, a tuple's ``getitem`` to the tuple."""
    x = view_root(x)
    if x.target is operator.getitem and isinstance(x.args[0], fx.Node):
        return x.args[0]
    return x


def _segment(
    unit: Unit, facts: GraphFacts, sizes: dict[Any, int], at: int, first: int, depth: int, chain: list[Unit]
) -> tuple[int, int]:
    """Bytes that recomputing ``unit`` at ``first`` keeps alive across the peak ``at`` (its inputs dead
    by then), and the operations it adds, after recomputing such inputs too (appended to ``chain``,
    inputs first) wherever that keeps fewer bytes, up to ``depth`` producers back."""
    kept = cost = 0
    for x in unit.inputs:
        if x.op in ("placeholder", "get_attr") or facts.live_at(x, first):
            continue
        size = sum(sizes.get(k, 0) for k in storages_of(x) if facts.last_use.get(k, -1) < at)
        if size == 0:
            continue  # live at the peak anyway
        base = _base(x)
        if any(link.producer is base for link in chain):
            continue
        sub = unit_at(base, facts, at, first) if depth > 0 else None
        if sub is not None:
            mark = len(chain)
            sub_kept, sub_cost = _segment(sub, facts, sizes, at, first, depth - 1, chain)
            if sub_kept < size:
                chain.append(sub)
                kept += sub_kept
                cost += sub_cost + sum(node_flops(n) for n in sub.nodes)
                continue
            del chain[mark:]
        kept += size
    return kept, cost


def _candidates(
    df: DataflowGraph,
    facts: GraphFacts,
    peak_op: int,
    peak: int,
    tried: set[str],
    depth: int,
    recompute: bool = True,
    spill_price: Callable[[int], int] | None = None,
) -> list[_Candidate]:
    """Units that could free bytes at ``peak_op``, where ``peak`` bytes are live (see the module doc), and
    with ``spill_price`` (bytes to operations), values that could be spilled instead; best priced first.
    Those that would free less than `MIN_NET` of the peak are left out (a recomputation for nothing)."""
    min_net = max(1, int(MIN_NET * peak))
    peak_node = df.ops[peak_op]
    at = facts.pos[peak_node]
    sizes = {key.cdata: t[0] for key, t in zip(df.tensor_keys, df.tensors)}
    seen: set[fx.Node] = set()
    found: list[_Candidate] = []
    for key, (size, producer, consumers, output) in zip(df.tensor_keys, df.tensors):
        if output or producer >= peak_op or peak_op in consumers or max(consumers, default=-1) <= peak_op:
            continue
        if spill_price is not None and size >= min_net:
            value = holder(df, producer, key.cdata)
            if value is not None and f"spill:{value.name}" not in tried:
                readers = facts.readers.get(key.cdata, ())
                if not any(r.op == "output" for r in readers):
                    found.append(_Candidate(value, spill_price(size), size, "spill"))
        node = df.ops[producer]
        if not recompute or node in seen or node.name in tried:
            continue
        seen.add(node)
        storages = set(storages_of(node))
        readers = sorted({r for k in storages for r in facts.readers.get(k, ())}, key=facts.pos.__getitem__)
        late = [r for r in readers if facts.pos[r] > at]
        if not late or any(r.op == "output" for r in late):
            continue
        first = facts.pos[late[0]]
        unit = unit_at(node, facts, at, first) if facts.pos[node] < at else None
        if unit is None:
            continue
        freed = sum(sizes.get(k, 0) for k in storages if facts.last_use.get(k, -1) > at)
        chain: list[Unit] = []
        kept, chain_cost = _segment(unit, facts, sizes, at, first, depth, chain)
        if freed - kept < min_net:
            continue
        cost = chain_cost + sum(node_flops(n) for n in unit.nodes)
        found.append(_Candidate(unit.producer, cost, freed - kept, "recompute", chain))
    found.sort(key=lambda c: c.net / max(c.cost, 1), reverse=True)
    return found


def _remake(gm: fx.GraphModule, step: RematStep, log: UndoLog) -> None:
    """Rewrites ``gm`` in place with ``step``'s recomputation, its unit, segment and late uses found
    afresh by name on the graph as it is now (earlier rewrites may have added readers or taken some
    away). The search applies its choices this way, one at a time, and so does `replay`: what the
    search kept is what a replay on the same graph makes. Raises `RematReplayError`, with nothing
    changed, when the step does not apply."""
    facts = GraphFacts.of(gm.graph)
    by_name: dict[str | tuple[str, int], fx.Node] = {_key(n): n for n in gm.graph.nodes}
    names = [step.peak, step.producer, *step.chain]
    missing = [name for name in names if name not in by_name]
    if missing:
        raise RematReplayError(f"no node {missing[0]} in the graph (another step?)")
    peak_node, node = by_name[step.peak], by_name[step.producer]
    at = facts.pos[peak_node]
    readers = {r for k in storages_of(node) for r in facts.readers.get(k, ())}
    late = sorted((r for r in readers if facts.pos[r] > at), key=facts.pos.__getitem__)
    if not late:
        raise RematReplayError(f"{step.producer} is not read after {step.peak}")
    if any(r.op == "output" for r in late):
        raise RematReplayError(f"{step.producer} is an output of the step")
    if step.kind == "spill":
        if facts.pos[node] >= at or not spillable(node):
            raise RematReplayError(f"{step.producer} cannot be spilled here")
        mark = log.mark()
        try:
            spill_storage(gm, facts, node, at, late, step.group, log)
        except RewriteRefused as e:
            log.undo(mark)
            raise RematReplayError(f"the spill of {step.producer} was refused") from e
        return
    first = facts.pos[late[0]]
    unit = unit_at(node, facts, at, first) if facts.pos[node] < at else None
    chain = [unit_at(by_name[name], facts, at, first) for name in step.chain]
    if unit is None or any(link is None for link in chain):
        raise RematReplayError(f"{step.producer} cannot be recomputed here")
    mark = log.mark()
    try:
        recompute_unit(gm, facts, unit, late, step.group, log, [link for link in chain if link is not None])
    except RewriteRefused as e:
        log.undo(mark)
        raise RematReplayError(f"the rewrite of {step.producer} was refused") from e


def held_by(df: DataflowGraph, order: list[int]) -> str:
    """A sentence on what holds the peak of ``df`` run in ``order``: where it is, the resident bytes,
    the bytes the operator there reads or writes, and the bytes of other tensors live across it."""
    profile = list(simulate_order(*df.native_args()[:3], order, df.resident_bytes)) if order else [0]
    step = max(range(len(profile)), key=profile.__getitem__)
    pos = {op: i for i, op in enumerate(order)}
    used = rest = 0
    for size, producer, consumers, output in df.tensors:
        start = pos[producer]
        last = len(order) if output else max([start, *(pos[c] for c in consumers)])
        if start <= step <= last:
            if start == step or order[step] in consumers:
                used += size
            else:
                rest += size
    node = df.ops[order[step]] if order else None
    where = (
        f"{node.target} ({node.name}, step {step + 1} of {len(order)})" if node is not None else "the start"
    )
    return (
        f"the peak is at {where}: {df.resident_bytes} bytes resident (parameters, buffers, inputs), "
        f"{used} bytes it reads or writes, {rest} bytes of other tensors live across it"
    )


#: How `rematerialize` may choose.
METHODS = ("greedy", "ilp")

#: The share of the time limit the 0/1 program may take (the greedy rounds go on in the rest).
ILP_SHARE = 0.5


def _record(result: RematResult, step: RematStep, cost: int, freed: int) -> None:
    """Adds a kept choice to ``result``."""
    if step.kind == "spill":
        result.spilled.append(step.producer)
        result.spilled_bytes += freed
        result.spill_flops += cost
    else:
        result.recomputed.append(step.producer)
        result.chained.extend(step.chain)
        result.recompute_flops += cost
    result.steps.append(step)


def _by_program(
    work: fx.GraphModule,
    df: DataflowGraph,
    profile: list[int],
    result: RematResult,
    budget: int | None,
    allowance: float | None,
    recompute: bool,
    spill_price: Callable[[int], int] | None,
    time_limit: float,
) -> tuple[DataflowGraph, list[int], int]:
    """Makes what the 0/1 program chooses (`model_opt.remat.select`) on ``work``, in place, and records
    it in ``result``; all undone if the simulated peak does not go down. Returns the graph's dataflow,
    its profile, and the number of rewrite groups used."""
    facts = GraphFacts.of(work.graph)
    min_bytes = max(1, int(MIN_NET * max(profile)))
    native, named = select.candidates(df, facts, recompute, spill_price, min_bytes)
    chosen = select.select(profile, native, named, budget, allowance, time_limit)
    log = UndoLog()
    made: list[tuple[RematStep, select.Choice]] = []
    for choice in chosen.choices:
        step = RematStep(choice.producer, (), choice.peak, len(made), choice.kind)
        try:
            _remake(work, step, log)
        except RematReplayError:
            continue  # a choice an earlier one made impossible (the program does not see rewrites)
        made.append((step, choice))
    new_df = build_dataflow(work)
    new_profile = _profile(new_df)
    result.program = {
        "goal": chosen.goal,
        "status": chosen.status,
        "bound": chosen.bound,
        "candidates": chosen.candidates,
        "chosen": len(chosen.choices),
        "applied": len(made),
        "modeled_peak": chosen.modeled_peak,
        "simulated_peak": max(new_profile),
        "seconds": chosen.seconds,
    }
    if not made or max(new_profile) >= max(profile):
        log.undo()
        return df, profile, 0
    for step, choice in made:
        _record(result, step, choice.cost, choice.freed)
    return new_df, new_profile, len(made)


def rematerialize(
    gm: fx.GraphModule,
    *,
    budget: int | None = None,
    max_recompute: float | None = 0.2,
    time_limit: float = 10.0,
    progress: Callable[[int, int], None] | None = None,
    recompute: bool = True,
    spill: bool = False,
    host_bandwidth: float = HOST_BANDWIDTH,
    device_flops: float = DEVICE_FLOPS,
    method: str = "greedy",
) -> RematResult:
    """Chooses recomputations for ``gm`` (a captured step, in its order) as the module doc says, and
    returns the rewritten copy. ``budget``: stop once the simulated peak is at most this many bytes
    (None: go as low as the allowance lets). ``max_recompute``: the extra cost (recomputed operations,
    and the spills' moves priced by `spill_cost`) at most this fraction of the step's operations (None:
    no limit). ``recompute``/``spill``: which ways of freeing a value the search may use (a spill copies
    it to host memory, `model_opt.remat.host`); with both, recomputation alone is searched too (each
    search within the time limit: twice the time in all), and the lower peak kept. ``method``:
    "greedy" (the rounds above), or "ilp": the 0/1 program of `model_opt.remat.select` first, its
    choice made, then the greedy rounds from there; and the greedy rounds alone, each in half the time
    limit: the lower peak is kept (then the lower cost), and ``program["kept"]`` says whether it was
    the program's. ``progress(round, peak_bytes)`` is
    called after each kept choice."""
    if method not in METHODS:
        raise ValueError(f"rematerialize: unknown method {method!r}; known: {', '.join(METHODS)}")
    options = dict(
        budget=budget,
        max_recompute=max_recompute,
        progress=progress,
        recompute=recompute,
        host_bandwidth=host_bandwidth,
        device_flops=device_flops,
    )
    if method == "ilp":
        half = dict(options, time_limit=time_limit / 2, spill=spill)
        by_program = _rematerialize(gm, use_program=True, **half)  # type: ignore[arg-type]
        best = _better(by_program, _rematerialize(gm, use_program=False, **half))  # type: ignore[arg-type]
        assert by_program.program is not None
        by_program.program["kept"] = best is by_program
        by_program.program["final_peak"] = by_program.peak_bytes
        best.program = by_program.program
        return best
    whole = dict(options, time_limit=time_limit, use_program=False)
    if not (recompute and spill):
        return _rematerialize(gm, spill=spill, **whole)  # type: ignore[arg-type]
    # Spills ranked early can spend an allowance that recomputations would have used for more bytes
    # (the rounds never take a choice back): with both allowed, recomputation alone is searched too,
    # each within the time limit, and the lower peak kept (then the lower cost), so that allowing
    # spills never ends higher than not allowing them.
    both = _rematerialize(gm, spill=True, **whole)  # type: ignore[arg-type]
    return _better(both, _rematerialize(gm, spill=False, **whole))  # type: ignore[arg-type]


def _better(first: RematResult, second: RematResult) -> RematResult:
    """Of two searches of the same step, the one with the lower peak (then the lower extra cost; the
    first on a tie), its time the two searches' together."""
    best = min(first, second, key=lambda r: (r.peak_bytes, r.extra_cost))
    best.seconds = first.seconds + second.seconds
    return best


def _rematerialize(
    gm: fx.GraphModule,
    *,
    budget: int | None,
    max_recompute: float | None,
    time_limit: float,
    progress: Callable[[int, int], None] | None,
    recompute: bool,
    spill: bool,
    host_bandwidth: float,
    device_flops: float,
    use_program: bool,
) -> RematResult:
    """`rematerialize` with one method: the greedy rounds, after the 0/1 program's choice if
    ``use_program``."""
    if not (recompute or spill):
        raise ValueError("rematerialize: nothing to choose from (recompute and spill both off)")
    if not (host_bandwidth > 0 and device_flops > 0):
        raise ValueError(
            f"host_bandwidth and device_flops must be positive, got {host_bandwidth}, {device_flops}"
        )
    started = time.perf_counter()
    work, _ = copy_graph(gm)
    df = build_dataflow(work)
    profile = _profile(df)
    result = RematResult(work, df, max(profile), max(profile), step_flops=total_flops(work.graph.nodes))
    allowance = None if max_recompute is None else max_recompute * result.step_flops

    def price(nbytes: int) -> int:
        return spill_cost(nbytes, host_bandwidth, device_flops)

    def spent() -> int:
        return result.recompute_flops + result.spill_flops

    group = 0
    if use_program:
        limit = ILP_SHARE * time_limit
        df, profile, group = _by_program(
            work, df, profile, result, budget, allowance, recompute, price if spill else None, limit
        )
    tried: set[str] = set()  # refused at the current peak; cleared when the peak moves
    batch = 1  # candidates applied together: doubled when a batch helps, halved when not
    depth = 0  # segments' depth: none in the first phase
    while True:
        score = _score(profile)
        if budget is not None and score[0] <= budget:
            result.stopped = "budget met"
            break
        if time.perf_counter() - started > time_limit:
            result.stopped = "time limit"
            break
        peak_op = max(range(len(profile)), key=profile.__getitem__)
        peak_node = df.ops[peak_op]
        found = _candidates(
            df,
            GraphFacts.of(work.graph),
            peak_op,
            score[0],
            tried,
            depth,
            recompute,
            price if spill else None,
        )
        cands = [c for c in found if allowance is None or spent() + c.cost <= allowance]
        if not cands and depth == 0 and recompute:
            depth, batch = CHAIN_DEPTH, 1  # second phase: segments
            tried.clear()
            continue
        if not cands:
            result.stopped = "allowance spent" if found else "no candidate"
            break
        # Within the allowance as a batch, too.
        chosen: list[_Candidate] = []
        total = spent()
        for cand in cands:
            if len(chosen) == batch:
                break
            if allowance is None or total + cand.cost <= allowance:
                chosen.append(cand)
                total += cand.cost
        log = UndoLog()
        applied: list[tuple[_Candidate, RematStep]] = []
        peak_key = _key(peak_node)
        for i, cand in enumerate(chosen):
            chain = tuple(link.producer.name for link in cand.chain)
            step = RematStep(cand.node.name, chain, peak_key, group + i, cand.kind)
            try:
                _remake(work, step, log)
            except RematReplayError:
                tried.add(cand.key)  # refused here (or no longer applies in this batch)
            else:
                applied.append((cand, step))
        if not applied:
            continue
        new_df = build_dataflow(work)
        new_profile = _profile(new_df)
        if _score(new_profile) < score:
            df, profile = new_df, new_profile
            for cand, step in applied:
                _record(result, step, cand.cost, cand.net)
            group += len(chosen)
            tried.clear()
            batch = min(2 * batch, MAX_BATCH)
            if progress is not None:
                progress(len(result.steps), max(profile))
            continue
        log.undo()
        if len(applied) == 1:
            tried.add(applied[0][0].key)
        batch = max(1, batch // 2)
    work.graph.lint()
    work.recompile()
    result.graph_module, result.dataflow = work, build_dataflow(work)
    result.peak_bytes = max(profile)
    result.seconds = time.perf_counter() - started
    return result


def replay(gm: fx.GraphModule, steps: list[RematStep]) -> fx.GraphModule:
    """A copy of ``gm`` with the recomputations ``steps`` (`RematResult.steps`, chosen on a capture of
    the same step, at another batch size say) made again, in their order. Raises `RematReplayError`
    when one does not apply: ``gm`` is not the step they were chosen on."""
    work, _ = copy_graph(gm)
    log = UndoLog()
    for step in steps:
        _remake(work, step, log)
    work.graph.lint()
    work.recompile()
    return work
