"""Rewriting a captured graph so that a unit is recomputed before its late uses.

The graph's node order is its execution order (FX drops each value after its last use), so freeing a
storage between its early and late uses means: the late uses read a copy, recomputed right before the
first of them, and the original dies after its last early use. The copy's inputs are the original's when
they are still live there; an input that was itself recomputed earlier in the search is read from its
copy, moved up if it comes later (*hoisted*, with whatever it reads); otherwise the original input is
kept alive until the copy (the search prices that in).

Every node a rewrite adds carries ``meta["model_opt_recompute"]``: the name of the node it copies and the
number of its group (one group per recomputation), so later rewrites and reports can find them.

A random fill (dropout's ``bernoulli_``) is replayed as activation checkpointing replays it: a
``get_rng_state`` inserted right before the original draw saves the generator's state; the copy reads
the state the generator has then, sets the saved one, draws, and sets the generator back.

Rewrites happen in place and record how to undo themselves (`UndoLog`): the search tries a rewrite,
simulates it, and takes it back when it does not help, without copying the graph. The graph module is
recompiled once, at the end of the search.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx
from torch._guards import detect_fake_mode
from torch.utils import _pytree as pytree

import model_opt.capture.ops  # noqa: F401  (defines the model_opt operators used below)
from model_opt.capture.dataflow import HOST, DataflowGraph, written_args
from model_opt.remat.host import FETCH, SPILL
from model_opt.remat.recompute import (
    StorageId,
    Unit,
    forget,
    hidden_writes,
    is_view_of,
    plain_aten,
    recompute_call,
    storages_of,
    unit_of,
)

META = "model_opt_recompute"
_GET_RNG = torch.ops.model_opt.get_rng_state.default
_SET_RNG = torch.ops.model_opt.set_rng_state.default
#: On a ``get_rng_state`` node a rewrite inserted: the name of the random fill whose state it saves.
_RNG_OF = "model_opt_rng_of"


class RewriteRefused(Exception):
    """The unit cannot be recomputed for these uses (a use reaches its storage by a path that cannot be
    rebuilt on the copy); what the rewrite did so far is in its `UndoLog`."""


@dataclass
class UndoLog:
    """How to take back graph edits, newest last."""

    steps: list[Callable[[], None]] = field(default_factory=list)

    def mark(self) -> int:
        return len(self.steps)

    def undo(self, to: int = 0) -> None:
        """Takes back the edits made since ``mark()`` returned ``to``, newest first."""
        while len(self.steps) > to:
            self.steps.pop()()


@dataclass
class GraphFacts:
    """Positions and storage lifetimes of one graph, in its node order."""

    #: The graph's nodes in order, and each node's position.
    nodes: list[fx.Node]
    pos: dict[fx.Node, int]
    #: Last position at which each storage is read (resident storages and outputs: past the end).
    last_use: dict[StorageId, int]
    #: Positions of the nodes that write each storage in place, in order.
    writes: dict[StorageId, list[int]]
    #: Per original node name: its copies, in graph order.
    copies: dict[str, list[fx.Node]]
    #: The nodes that read each storage (directly or through a view), in graph order; the output node
    #: included.
    readers: dict[StorageId, list[fx.Node]]

    @classmethod
    def of(cls, graph: fx.Graph) -> GraphFacts:
        nodes = list(graph.nodes)
        pos: dict[fx.Node, int] = {}
        last_use: dict[StorageId, int] = {}
        writes: dict[StorageId, list[int]] = {}
        copies: dict[str, list[fx.Node]] = {}
        readers: dict[StorageId, list[fx.Node]] = {}
        end = len(nodes) + 1
        for i, node in enumerate(nodes):
            pos[node] = i
            if node.op in ("placeholder", "get_attr"):
                for key in storages_of(node):
                    last_use[key] = end
                continue
            at = end if node.op == "output" else i
            for inp in node.all_input_nodes:
                for key in storages_of(inp):
                    last_use[key] = max(last_use.get(key, at), at)
                    found = readers.setdefault(key, [])
                    if not found or found[-1] is not node:
                        found.append(node)
            for w in written_args(node) + hidden_writes(node):
                for key in storages_of(w):
                    writes.setdefault(key, []).append(i)
            info = node.meta.get(META)
            if info is not None:
                copies.setdefault(info[0], []).append(node)
        return cls(nodes, pos, last_use, writes, copies, readers)

    def live_at(self, node: fx.Node, at: int) -> bool:
        """Whether ``node``'s storages are all still read at or after position ``at``."""
        keys = storages_of(node)
        return bool(keys) and all(self.last_use.get(k, -1) >= at for k in keys)

    def written_between(self, node: fx.Node, start: int, end: int) -> bool:
        """Whether any storage of ``node`` is written at a position in ``(start, end)``."""
        return any(start < w < end for k in storages_of(node) for w in self.writes.get(k, ()))


def copy_graph(gm: fx.GraphModule) -> tuple[fx.GraphModule, dict[fx.Node, fx.Node]]:
    """A copy of ``gm`` sharing its attributes, and the map from its nodes to the copy's."""
    graph = fx.Graph()
    val_map: dict[fx.Node, fx.Node] = {}
    out = graph.graph_copy(gm.graph, val_map)
    graph.output(out)
    return fx.GraphModule(gm, graph), val_map


def _fake_value(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], like: Any = None) -> Any:
    """The traced value of ``target(*args, **kwargs)`` on the nodes' traced values (fresh storages), in
    their fake mode (or ``like``'s, when no argument is a tensor)."""
    vals = pytree.tree_map(lambda a: a.meta["val"] if isinstance(a, fx.Node) else a, (args, kwargs))
    mode = detect_fake_mode([v for v in [*pytree.tree_leaves(vals), like] if isinstance(v, torch.Tensor)])
    if mode is None:
        raise RewriteRefused("no fake tensor mode to trace the copy in")
    try:
        with mode:
            return target(*vals[0], **vals[1])
    except Exception as e:  # an operator the fake mode cannot run on these values: not recomputed
        raise RewriteRefused(f"{target} cannot be traced on the copy's inputs: {e}") from e


class _Copier:
    """Builds one group of copies before ``before``."""

    def __init__(self, graph: fx.Graph, facts: GraphFacts, before: fx.Node, group: int, log: UndoLog) -> None:
        self.graph, self.facts, self.before, self.group = graph, facts, before, group
        self.log = log
        self.clones: dict[fx.Node, fx.Node] = {}
        self.hoisted: set[fx.Node] = set()
        self.at = facts.pos[before]

    def _insert(
        self, original: fx.Node, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> fx.Node:
        with self.graph.inserting_before(self.before):
            node = self.graph.call_function(target, args, kwargs)
        self.log.steps.append(lambda: self.graph.erase_node(node))
        if target is operator.getitem:
            node.meta["val"] = args[0].meta["val"][args[1]]
        else:
            like = next(iter(pytree.tree_leaves(original.meta.get("val"))), None)
            node.meta["val"] = _fake_value(target, args, kwargs, like=like)
        node.meta[META] = (original.name, self.group)
        self.clones[original] = node
        return node

    def external(self, x: fx.Node) -> fx.Node:
        """The node a copy reads in place of the unit's input ``x`` (see the module doc)."""
        if x.op in ("placeholder", "get_attr") or self.facts.live_at(x, self.at):
            return x
        copies = self.facts.copies.get(x.name, [])
        for copy in copies:
            if copy in self.hoisted or (self.facts.pos[copy] < self.at and self.facts.live_at(copy, self.at)):
                return copy
        for copy in copies:
            if self.facts.pos[copy] >= self.at:
                self._hoist(copy)
                return copy
        return x

    def _hoist(self, copy: fx.Node) -> None:
        """Moves ``copy``'s whole group (and the later copies it reads) right before ``before``."""
        group = copy.meta[META][1]
        members = [n for n in self.graph.nodes if n.meta.get(META, (None, None))[1] == group]
        for n in members:
            for inp in n.all_input_nodes:
                if inp not in members and inp.meta.get(META) and inp not in self.hoisted:
                    if self.facts.pos[inp] >= self.at:
                        self._hoist(inp)
        for n in members:
            # Undone newest first, each node goes back after the node that preceded it when it left.
            self.log.steps.append(lambda n=n, prev=n.prev: prev.append(n))
            self.before.prepend(n)
            self.hoisted.add(n)

    def rebuild(self, x: fx.Node) -> fx.Node:
        """The copy of a member of the unit, or of a chain of views over one."""
        if x in self.clones:
            return self.clones[x]
        if x.args and isinstance(x.args[0], fx.Node) and is_view_of(x, x.args[0]):
            base = self.rebuild(x.args[0])
            return self._insert(x, x.target, (base, *x.args[1:]), dict(x.kwargs))
        raise RewriteRefused(f"{x.name} reaches the recomputed storage by a path that cannot be rebuilt")

    def _saved_state(self, fill: fx.Node) -> fx.Node:
        """The generator state ``fill`` drew from: read right before it in the original graph (once)."""
        before = fill.prev
        if before.meta.get(_RNG_OF) == fill.name:
            return before
        device = str(fill.meta["val"].device)
        with self.graph.inserting_before(fill):
            node = self.graph.call_function(_GET_RNG, (device,))
        self.log.steps.append(lambda: self.graph.erase_node(node))
        node.meta["val"] = _fake_value(_GET_RNG, (device,), {}, like=fill.meta["val"])
        node.meta[_RNG_OF] = fill.name
        return node

    def _call(self, fill: fx.Node, target: Any, args: tuple[Any, ...]) -> fx.Node:
        """A node of the copy that copies nothing (generator state moves), marked so it is never taken
        for the copy of an original node."""
        with self.graph.inserting_before(self.before):
            node = self.graph.call_function(target, args)
        self.log.steps.append(lambda: self.graph.erase_node(node))
        node.meta["val"] = _fake_value(target, args, {}, like=fill.meta["val"])
        node.meta[META] = (f"{fill.name}:rng", self.group)
        return node

    def copy_unit(self, unit: Unit) -> None:
        """Copies ``unit``'s nodes; inputs that are (views of) nodes copied before read the copies. A
        random fill is replayed from the generator state it drew from, and the generator is put back
        as it was, so every later draw is the one eager makes."""
        call = recompute_call(unit.producer, unit.overwritten)
        assert call is not None
        target, args, kwargs = call
        saved = {fill: self._saved_state(fill) for fill in unit.random}

        def arg_map(n: fx.Node) -> fx.Node:
            try:  # a member, or a view of one, is rebuilt on the copy
                return self.rebuild(n)
            except RewriteRefused:
                return self.external(n)

        args, kwargs = fx.node.map_arg((args, kwargs), arg_map)  # type: ignore[assignment]
        self._insert(unit.producer, target, args, kwargs)
        for node in unit.nodes[1:]:
            a, k = fx.node.map_arg((node.args, node.kwargs), arg_map)
            if node in saved:
                device = str(node.meta["val"].device)
                now = self._call(node, _GET_RNG, (device,))
                self._call(node, _SET_RNG, (device, saved[node]))
                self._insert(node, node.target, a, k)  # type: ignore[arg-type]
                self._call(node, _SET_RNG, (device, now))
            else:
                self._insert(node, node.target, a, k)  # type: ignore[arg-type]


def recompute_unit(
    gm: fx.GraphModule,
    facts: GraphFacts,
    unit: Unit,
    late: Sequence[fx.Node],
    group: int,
    log: UndoLog,
    chain: Sequence[Unit] = (),
) -> None:
    """Rewrites ``gm``'s graph in place: ``unit`` is recomputed right before the first of ``late`` (its
    uses after the boundary, in graph order), and they read the copy; every edit goes to ``log``.
    ``chain``: units whose storages are dead by then and that the copy reads, recomputed first (inputs
    first), as a checkpointed segment is. The graph module is not recompiled. Raises `RewriteRefused`."""
    copier = _Copier(gm.graph, facts, late[0], group, log)
    for link in chain:
        copier.copy_unit(link)
    copier.copy_unit(unit)
    _rewire(copier, late, unit.storages, log)


def _rewire(copier: _Copier, late: Sequence[fx.Node], storages: set[StorageId], log: UndoLog) -> None:
    """Makes each of ``late`` read the copy (`_Copier.rebuild`) wherever it read ``storages``."""
    for consumer in late:
        rewired = False
        for x in list(consumer.all_input_nodes):
            if set(storages_of(x)) & storages:
                copy = copier.rebuild(x)
                consumer.replace_input_with(x, copy)
                log.steps.append(lambda c=consumer, x=x, copy=copy: c.replace_input_with(copy, x))
                rewired = True
        if rewired and set(storages_of(consumer)) & storages:
            _retrace(consumer, log)


def spillable(node: fx.Node) -> bool:
    """Whether ``node``'s value can be spilled whole: one tensor, on its own storage (no offset, no
    gaps, none of the storage outside it), so that the copy fetched back is the storage."""
    val = node.meta.get("val")
    if node.op != "call_function" or META in node.meta or not isinstance(val, torch.Tensor):
        return False
    return (
        val.layout == torch.strided
        and val.is_contiguous()
        and val.storage_offset() == 0
        and val.numel() * val.element_size() == val.untyped_storage().nbytes() > 0
    )


def spill_storage(
    gm: fx.GraphModule,
    facts: GraphFacts,
    holder: fx.Node,
    at: int,
    late: Sequence[fx.Node],
    group: int,
    log: UndoLog,
) -> None:
    """Rewrites ``gm``'s graph in place: ``holder``'s value (`spillable`) is copied to host memory after
    its last use before position ``at`` and fetched back right before the first of ``late`` (its uses
    after ``at``), which read the fetched copy. The spill node carries ``meta[HOST]`` (its storage
    counts no device bytes); the fetch node is marked as a copy of ``holder`` (``meta[META]``), so a
    later recomputation that reads ``holder`` there reads it. Raises `RewriteRefused`."""
    storages = set(storages_of(holder))
    early = [r for k in storages for r in facts.readers.get(k, ()) if facts.pos[r] < at]
    after = max([holder, *early], key=facts.pos.__getitem__)
    if facts.written_between(holder, facts.pos[after], facts.pos[late[0]]):
        raise RewriteRefused(f"{holder.name} is written while it would be in host memory")
    device = str(holder.meta["val"].device)
    graph = gm.graph
    with graph.inserting_after(after):
        spill = graph.call_function(SPILL, (holder,))
    log.steps.append(lambda: graph.erase_node(spill))
    spill.meta[HOST] = True
    spill.meta["val"] = _fake_value(SPILL, (holder,), {})
    spill.meta[META] = (f"{holder.name}:spill", group)
    copier = _Copier(graph, facts, late[0], group, log)
    copier._insert(holder, FETCH, (spill, device), {})
    _rewire(copier, late, storages, log)


def _retrace(view: fx.Node, log: UndoLog) -> None:
    """Gives ``view``, a late view of the recomputed storage now reading the copy, a traced value on
    the copy's storage (and so the late views of it, in turn): the lifetimes the search simulates
    and the views later rewrites rebuild follow the storage the view really aliases."""
    if plain_aten(view) is None or view.target._schema.is_mutable:  # type: ignore[union-attr]
        raise RewriteRefused(f"{view.name} aliases the recomputed storage and is not a view")
    old = view.meta["val"]
    old_keys = storages_of(view)
    views = [u for u in view.users if u.args and u.args[0] is view and storages_of(u) == old_keys]
    view.meta["val"] = _fake_value(view.target, view.args, view.kwargs, like=old)
    forget(view)

    def undo() -> None:
        view.meta["val"] = old
        forget(view)

    log.steps.append(undo)
    for user in views:
        _retrace(user, log)


def unit_at(node: fx.Node, facts: GraphFacts, at: int, until: int) -> Unit | None:
    """``node``'s unit, with every in-place write of its storages (all before the peak ``at``)
    replayed, if it can be recomputed at ``until`` with the values it had: no outside input written in
    between."""
    if node.op != "call_function" or META in node.meta:
        return None
    storages = set(storages_of(node))
    writer_pos = sorted({w for k in storages for w in facts.writes.get(k, ())})
    if any(w >= at for w in writer_pos):
        return None
    unit = unit_of(node, [facts.nodes[w] for w in writer_pos])
    # The unit's own storages are written by its writers (replayed); an outside input written after
    # the unit began would give the copy another value.
    if unit is None or any(facts.written_between(x, facts.pos[node], until) for x in unit.inputs):
        return None
    return unit


def holder(df: DataflowGraph, producer: int, key: Any) -> fx.Node | None:
    """The node whose value is the whole storage ``key`` that operator ``producer`` makes (the operator,
    or its tuple unpacking), if it can be spilled (`spillable`)."""
    for node in [df.ops[producer], *df.unpacks.get(producer, [])]:
        if storages_of(node) == [key] and spillable(node):
            return node
    return None
