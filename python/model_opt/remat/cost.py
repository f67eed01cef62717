"""What recomputing an operator costs, in floating-point operations.

Matrix products and convolutions count their FLOPs by PyTorch's own formulas
(`torch.utils.flop_counter`); every other operator is memory-bound and counts one operation per element
it writes, so a recomputed ``relu`` of a million elements costs a million, not nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import fx
from torch.utils import _pytree as pytree
from torch.utils.flop_counter import flop_registry


def _elements_written(node: fx.Node) -> int:
    return sum(
        math.prod(leaf.shape)
        for leaf in pytree.tree_leaves(node.meta.get("val"))
        if isinstance(leaf, torch.Tensor)
    )


def _value(arg: object) -> object:
    return arg.meta.get("val") if isinstance(arg, fx.Node) else arg


def node_flops(node: fx.Node) -> int:
    """Operations of one run of ``node`` (0 for placeholders, views and unpacking)."""
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return 0
    returns = node.target._schema.returns
    if returns and all(r.alias_info is not None and not r.alias_info.is_write for r in returns):
        return 0  # a view computes nothing
    formula = flop_registry.get(node.target.overloadpacket)
    if formula is not None:
        try:
            args, kwargs = pytree.tree_map(_value, (node.args, node.kwargs))
            return int(formula(*args, **kwargs, out_val=node.meta.get("val")))
        except Exception:  # a formula that does not take this overload's arguments: count elements
            pass
    return _elements_written(node)


def total_flops(nodes: Iterable[fx.Node]) -> int:
    """Operations of a whole step: the sum over its nodes."""
    return sum(node_flops(n) for n in nodes)
