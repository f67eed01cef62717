"""The dataflow graph of a captured step, in the form the scheduler takes (and tracing's error type).

A step is traced with ``make_fx`` under fake tensors (`model_opt.capture.step`), so capturing a
batch-32 step costs no real compute. The dataflow graph handed to the scheduler is built at the storage
level:

* a *tensor* is one storage; views and aliases (``view``, ``t``, ``alias``, ``getitem`` ...) produce no
  tensor of their own, they are consumers of their base's storage;
* an operator that writes an argument in place (schema ``Tensor(a!)``) is ordered after every earlier
  reader and writer of that storage, and before every later one;
* storages that exist before the step (parameters, buffers, optimizer state, inputs, constants) are
  resident: counted for the whole step and never freed;
* sizes are storage bytes (``untyped_storage().nbytes()``: shape x dtype of the base).
"""

from __future__ import annotations

import math
import operator
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import torch
from torch import fx
from torch.fx.experimental.proxy_tensor import make_fx
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils import _pytree as pytree

from model_opt._native import ModelOptError

Tensors = Union[torch.Tensor, Sequence[torch.Tensor]]
LossFn = Callable[[Any, Any], torch.Tensor]

#: (size in bytes, producer op, consumer ops, kept to the end of the step) — the tuple `schedule_graph` takes.
TensorTuple = tuple[int, int, list[int], bool]


class CaptureError(ModelOptError, RuntimeError):
    """The step could not be captured (unsupported optimizer, untraceable model, ...)."""


@dataclass
class DataflowGraph:
    """The storage-level dataflow graph of a captured FX graph, in the form the Rust scheduler takes."""

    ops: list[fx.Node]
    tensors: list[TensorTuple]
    edges: list[tuple[int, int]]
    resident_bytes: int
    #: Bytes of each resident storage's kind, for reports: "input" (placeholders) or "constant".
    resident_detail: dict[str, int] = field(default_factory=dict)
    #: ``getitem`` nodes that unpack an operator's tuple output, per operator index. They are not
    #: scheduled on their own: they run right after their operator, so the tuple (which keeps every
    #: element alive) is dropped at once and each element lives exactly as long as simulated.
    unpacks: dict[int, list[fx.Node]] = field(default_factory=dict)
    #: The storage of each tensor, in the order of ``tensors``.
    tensor_keys: list[StorageWeakRef] = field(default_factory=list)

    def native_args(self) -> tuple[int, list[TensorTuple], list[tuple[int, int]], int]:
        """``(num_ops, tensors, edges, resident)`` for `schedule_graph` / `simulate_order`."""
        return len(self.ops), self.tensors, self.edges, self.resident_bytes


def _as_tuple(x: Tensors) -> tuple[torch.Tensor, ...]:
    return (x,) if isinstance(x, torch.Tensor) else tuple(x)


def _storages(value: Any) -> list[tuple[StorageWeakRef, int]]:
    out = []
    for leaf in pytree.tree_leaves(value):
        if isinstance(leaf, torch.Tensor) and leaf.layout == torch.strided:
            storage = leaf.untyped_storage()
            out.append((StorageWeakRef(storage), int(storage.nbytes())))
    return out


#: `node_storages` per node, computed once (a node's traced value never changes). Kept beside the node,
#: not in its meta: a copied graph (``copy.deepcopy``) has new storages.
_STORAGES: weakref.WeakKeyDictionary[fx.Node, list[tuple[StorageWeakRef, int]]] = weakref.WeakKeyDictionary()


#: On a node whose value lives in host memory (a spilled activation's copy): its storages count no
#: device bytes.
HOST = "model_opt_host"


def node_storages(node: fx.Node) -> list[tuple[StorageWeakRef, int]]:
    """The strided storages under a node's traced value (``meta['val']``) and their bytes, in order
    (0 bytes for a value in host memory, `HOST`); computed once per node (graph rewrites look them up
    many times)."""
    found = _STORAGES.get(node)
    if found is None:
        found = _storages(node.meta.get("val"))
        if node.meta.get(HOST):
            found = [(key, 0) for key, _ in found]
        _STORAGES[node] = found
    return found


#: Per operator: its written arguments' ``(position, name, keyword-only)``, from its schema.
_WRITTEN: dict[Any, tuple[tuple[int, str, bool], ...]] = {}


def forget_storages(node: fx.Node) -> None:
    """Drops `node_storages`' record of ``node`` (a rewrite gave it a new traced value)."""
    _STORAGES.pop(node, None)


def written_args(node: fx.Node) -> list[fx.Node]:
    """The argument nodes an operator writes in place (schema alias info ``(a!)``)."""
    target = node.target
    found = _WRITTEN.get(target)
    if found is None:
        schema = getattr(target, "_schema", None)
        found = tuple(
            (i, arg.name, arg.kwarg_only)
            for i, arg in enumerate(schema.arguments if schema is not None else ())
            if arg.alias_info is not None and arg.alias_info.is_write
        )
        try:
            _WRITTEN[target] = found
        except TypeError:  # an unhashable target: not cached
            pass
    written: list[fx.Node] = []
    for i, name, kwarg_only in found:
        value = node.kwargs.get(name) if (kwarg_only or i >= len(node.args)) else node.args[i]
        written.extend(n for n in pytree.tree_leaves(value) if isinstance(n, fx.Node))
    return written


def build_dataflow(gm: fx.GraphModule) -> DataflowGraph:
    """Builds the storage-level dataflow graph of a graph traced with fake tensors (``meta['val']``)."""
    ops: list[fx.Node] = []
    index: dict[fx.Node, int] = {}
    # Per storage: [size, producer or None (resident), consumers, output].
    info: dict[StorageWeakRef, list[Any]] = {}
    order: list[StorageWeakRef] = []
    last_write: dict[StorageWeakRef, int] = {}
    reads_since: dict[StorageWeakRef, list[int]] = {}
    edges: set[tuple[int, int]] = set()
    resident_detail = {"input": 0, "constant": 0}
    last_random: int | None = None
    unpacks: dict[int, list[fx.Node]] = {}

    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            for key, size in node_storages(node):
                if key not in info:
                    info[key] = [size, None, [], False]
                    order.append(key)
                    resident_detail["input" if node.op == "placeholder" else "constant"] += size
            continue
        if node.op == "output":
            for arg in pytree.tree_leaves(node.args):
                if isinstance(arg, fx.Node):
                    for key, _ in node_storages(arg):
                        if key in info and info[key][1] is not None:
                            info[key][3] = True
            continue
        if node.target is operator.getitem and node.args and node.args[0] in index:
            # Part of its producer (see `DataflowGraph.unpacks`): reads of its value are reads of
            # the producer's output storage, which the producer already owns.
            owner = index[node.args[0]]
            index[node] = owner
            unpacks.setdefault(owner, []).append(node)
            continue
        i = len(ops)
        ops.append(node)
        index[node] = i
        # Random ops draw from one generator: keep their relative order so results stay identical.
        if (
            isinstance(node.target, torch._ops.OpOverload)
            and torch.Tag.nondeterministic_seeded in node.target.tags
        ):
            if last_random is not None:
                edges.add((last_random, i))
            last_random = i
        # Data dependencies between operators are FX's own: every input node must run first.
        for inp in node.all_input_nodes:
            if inp in index:
                edges.add((index[inp], i))
        read = [s for inp in node.all_input_nodes for s in node_storages(inp)]
        written = {key for w in written_args(node) for key, _ in node_storages(w)}
        for key, size in node_storages(node):
            if key not in info:
                info[key] = [size, i, [], False]
                order.append(key)
        for key, _ in read:
            if key not in info:
                continue
            consumers = info[key][2]
            if not consumers or consumers[-1] != i:
                consumers.append(i)
            if key in written:
                continue
            w = last_write.get(key)
            if w is not None and w != i:
                edges.add((w, i))
            reads_since.setdefault(key, []).append(i)
        for key in written:
            # Write after read and write after write: everything that touched the old value goes first.
            w = last_write.get(key)
            if w is not None and w != i:
                edges.add((w, i))
            for r in reads_since.get(key, []):
                if r != i:
                    edges.add((r, i))
            last_write[key] = i
            reads_since[key] = []

    tensors: list[TensorTuple] = []
    tensor_keys: list[StorageWeakRef] = []
    resident = 0
    for key in order:
        size, producer, consumers, output = info[key]
        if producer is None:
            resident += size
        else:
            tensors.append((size, producer, consumers, output))
            tensor_keys.append(key)
    return DataflowGraph(ops, tensors, sorted(edges), resident, resident_detail, unpacks, tensor_keys)


# --------------------------------------------------------------------------------------------------
# Tracing.


def _fake_trace(fn: Callable[..., Any], args: list[torch.Tensor]) -> fx.GraphModule:
    try:
        return make_fx(fn, tracing_mode="fake", _allow_non_fake_inputs=True)(*args)
    except CaptureError:
        raise
    except Exception as e:  # make_fx raises many kinds; say which step failed and why
        raise CaptureError(f"tracing the step with make_fx failed: {type(e).__name__}: {e}") from e


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of a tensor's elements (shape x dtype), for reports."""
    return math.prod(t.shape) * t.element_size()


def storage_sizes(tensors: Iterable[torch.Tensor]) -> list[int]:
    """Bytes of each storage under `tensors` (strided ones), each storage once (views and tied
    weights share one), in the order first seen."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t.layout == torch.strided:
            # By the storage's identity, not its address: fake tensors' storages have none.
            storage = t.untyped_storage()
            seen[storage._cdata] = storage.nbytes()
    return list(seen.values())


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the storages under `tensors` (strided ones), each storage counted once."""
    return sum(storage_sizes(tensors))
