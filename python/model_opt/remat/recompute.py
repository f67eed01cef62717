"""Which operators of a captured step can be recomputed faithfully, and what a recomputation replays.

A recomputation must compute bit for bit what the original computed, and change nothing else. So an
operator is recomputed only when

* it is an ``aten`` (or ``prims``) operator: the model's own custom operators, the optimizer's step and
  the RNG state operators (`model_opt.capture.ops`) have effects a second call would repeat;
* it draws no random numbers (``nondeterministic_seeded``: ``rand``...; recomputing them with the
  generator where it is now would draw different numbers) and is not tagged
  ``nondeterministic_bitwise`` (its results may differ between two calls) — except dropout's mask: an
  uninitialised allocation overwritten whole by ``bernoulli_`` (`random_fill`) is redrawn from the
  generator state saved right before the original draw, as activation checkpointing does
  (`model_opt.remat.rewrite`);
* it writes none of its arguments — except ``native_batch_norm``, whose schema hides the update of the
  running statistics: it is recomputed without them (``running_mean``/``running_var`` ``None``), which
  computes the same output (the statistics are only written, never read, in training), and the
  update happens once, as in eager;
* it does not read uninitialised memory (``empty``...), nor is it one of the operators that resize or
  swap storages.

A *unit* is what is recomputed to rebuild the storages an operator produced: the operator, the
``getitem`` nodes that unpack its tuple, and every in-place writer of those storages that ran before the
point where the storage is dropped (``relu_`` after a batch norm, the residual ``add_``). Its values
are the same at the recomputation only if no input it reads was written in between (checked).
"""

from __future__ import annotations

import operator
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from model_opt.capture.dataflow import forget_storages, node_storages, written_args

#: Substrings of operator names that are never recomputed, whatever their schema says.
_REFUSED_NAMES = (
    "dropout",
    "rand",
    "bernoulli",
    "normal",
    "uniform",
    "multinomial",
    "exponential",
    "geometric",
    "cauchy",
    "poisson",
    "seed",
    "rng",
    "empty",
    "set_",
    "resize",
    "_local_scalar_dense",
)

#: Operators whose schema does not mark the arguments they write.
_HIDDEN_WRITES = ("native_batch_norm", "batch_norm", "_batch_norm")


#: A storage's identity: ``StorageWeakRef.cdata``, unique while the traced values that hold the storage
#: live (the graph's ``meta['val']``); plain ints, because the search looks them up millions of times.
StorageId = int


def hidden_writes(node: fx.Node) -> list[fx.Node]:
    """Arguments written without a schema mark: batch norm's running statistics in training."""
    if node.target is torch.ops.aten.native_batch_norm.default and len(node.args) == 8 and node.args[5]:
        return [a for a in node.args[3:5] if isinstance(a, fx.Node)]
    return []


def storages_of(node: fx.Node) -> list[StorageId]:
    """The strided storages under a node's traced value (``meta['val']``), in order (computed once per
    node, kept beside it as `model_opt.capture.dataflow.node_storages` keeps its own)."""
    found = _KEYS.get(node)
    if found is None:
        found = _KEYS[node] = [key.cdata for key, _ in node_storages(node)]
    return found


_KEYS: weakref.WeakKeyDictionary[fx.Node, list[StorageId]] = weakref.WeakKeyDictionary()


def forget(node: fx.Node) -> None:
    """Drops what is recorded of ``node``'s storages (a rewrite gave it a new traced value)."""
    _KEYS.pop(node, None)
    forget_storages(node)


def plain_aten(node: fx.Node) -> torch._ops.OpOverload | None:
    """The node's operator if it is an ``aten``/``prims`` operator with no random or refused name."""
    target = node.target
    if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
        return None
    if target.namespace not in ("aten", "prims"):
        return None
    tags = target.tags
    if torch.Tag.nondeterministic_seeded in tags or torch.Tag.nondeterministic_bitwise in tags:
        return None
    name = target.name()
    if any(part in name for part in _REFUSED_NAMES):
        return None
    return target


#: Uninitialised allocations: recomputed (as ``empty_strided`` of the same layout, reading nothing) only
#: when a random writer of the unit overwrites every element before anything reads them.
_EMPTY = ("aten::empty_like", "aten::empty", "aten::empty_strided")

#: Random in-place operators that overwrite every element of their first argument (dropout's mask is
#: ``empty_like`` then ``bernoulli_``): replayed with the generator state they drew from.
_RANDOM_FILLS = ("aten::bernoulli_",)


def _empty_call(node: fx.Node) -> tuple[Any, tuple[Any, ...], dict[str, Any]] | None:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.layout != torch.strided:
        return None
    kwargs = {"dtype": val.dtype, "layout": val.layout, "device": val.device, "pin_memory": False}
    return torch.ops.aten.empty_strided.default, (list(val.shape), list(val.stride())), kwargs


def recompute_call(
    node: fx.Node, overwritten: bool = False
) -> tuple[Any, tuple[Any, ...], dict[str, Any]] | None:
    """``(target, args, kwargs)`` that recompute ``node``'s output without side effects, or None when
    ``node`` cannot be recomputed faithfully (see the module doc). ``overwritten``: a random fill of the
    unit overwrites the output first, so an uninitialised allocation may be recomputed."""
    if overwritten and isinstance(node.target, torch._ops.OpOverload) and node.target._schema.name in _EMPTY:
        return _empty_call(node)
    target = plain_aten(node)
    if target is None:
        return None
    if target is torch.ops.aten.native_batch_norm.default:
        args = list(node.args)
        if len(args) != 8 or node.kwargs:
            return None
        if args[5] is True:  # training: drop the running statistics, written only
            args[3] = args[4] = None
        return target, tuple(args), {}
    if any(part in target.name() for part in _HIDDEN_WRITES):
        return None
    if target._schema.is_mutable:
        return None
    return target, tuple(node.args), dict(node.kwargs)


def replayable_writer(node: fx.Node, storages: set[StorageId]) -> bool:
    """Whether ``node`` is an in-place operator that writes only its first argument, one of
    ``storages``, and can be replayed on a recomputed copy (``relu_``, ``add_``...)."""
    target = plain_aten(node)
    if target is None or any(part in target.name() for part in _HIDDEN_WRITES):
        return False
    written = written_args(node)
    if len(written) != 1 or not node.args or node.args[0] is not written[0]:
        return False
    return bool(set(storages_of(written[0])) & storages)


def random_fill(node: fx.Node, storages: set[StorageId]) -> bool:
    """Whether ``node`` is a random fill (`_RANDOM_FILLS`) of one of ``storages``, whole: replayable
    with the generator state it drew from."""
    target = node.target
    if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
        return False
    if target._schema.name not in _RANDOM_FILLS or not node.args or not isinstance(node.args[0], fx.Node):
        return False
    keys = storages_of(node.args[0])
    return len(keys) == 1 and keys[0] in storages and written_args(node) == [node.args[0]]


def is_view_of(node: fx.Node, base: fx.Node) -> bool:
    """Whether ``node`` is a non-writing aten operator whose first argument is ``base`` and whose value
    shares ``base``'s storage (``view``, ``t``, ``alias``, ``expand``...)."""
    if plain_aten(node) is None or not node.args or node.args[0] is not base:
        return False
    if node.target._schema.is_mutable:  # type: ignore[union-attr]
        return False
    mine, theirs = storages_of(node), storages_of(base)
    return len(mine) == 1 and bool(theirs) and mine[0] == theirs[0]


@dataclass
class Unit:
    """What is recomputed to rebuild the storages one operator produced (see the module doc)."""

    #: The operator, then its ``getitem`` nodes, then the in-place writers, in graph order.
    nodes: list[fx.Node]
    #: The storages the operator produced.
    storages: set[StorageId]
    #: The in-place writers among ``nodes``, in graph order.
    writers: list[fx.Node] = field(default_factory=list)
    #: Nodes read by the unit that it does not compute itself, in first-use order.
    inputs: list[fx.Node] = field(default_factory=list)
    #: The random fills among ``writers``: replayed from the generator state saved before each.
    random: list[fx.Node] = field(default_factory=list)
    #: Whether the producer is an uninitialised allocation the first random fill overwrites.
    overwritten: bool = False

    @property
    def producer(self) -> fx.Node:
        return self.nodes[0]


def unit_of(producer: fx.Node, writers: list[fx.Node]) -> Unit | None:
    """The unit rebuilding ``producer``'s storages, replaying ``writers`` (the in-place writes of those
    storages, in graph order), or None when something in it cannot be replayed faithfully."""
    storages = set(storages_of(producer))
    if not storages:
        return None
    random = [w for w in writers if random_fill(w, storages)]
    # An uninitialised allocation only if a random fill overwrites it before anything else touches it.
    overwritten = bool(writers) and writers[0] in random and writers[0].args[0] is producer
    call = recompute_call(producer, overwritten)
    if call is None:
        return None
    # A view or an in-place op produces nothing of its own.
    for inp in producer.all_input_nodes:
        if storages & set(storages_of(inp)):
            return None
    getitems = [u for u in producer.users if u.target is operator.getitem]
    if isinstance(producer.meta.get("val"), (tuple, list)) and len(getitems) != len(producer.users):
        return None
    if not all(w in random or replayable_writer(w, storages) for w in writers):
        return None
    nodes = [producer, *getitems, *writers]
    members = set(nodes)
    inputs: list[fx.Node] = []
    read = [call[1:], *((n.args, n.kwargs) for n in nodes[1:])]  # what the copies will read
    for args in read:
        for inp in _nodes_in(args):
            # A view of a member (a writer may read one of the storage it writes) is rebuilt on the copy.
            if inp not in inputs and view_root(inp) not in members:
                inputs.append(inp)
    return Unit(nodes, storages, list(writers), inputs, random, overwritten)


def _nodes_in(args: Any) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(args, found.append)
    return found


def view_root(node: fx.Node) -> fx.Node:
    """``node`` with its chain of views followed back (`is_view_of`) to the node they view."""
    while node.args and isinstance(node.args[0], fx.Node) and is_view_of(node, node.args[0]):
        node = node.args[0]
    return node
