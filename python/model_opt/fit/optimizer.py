"""What an optimizer holds outside the captured graph: its state, and the temporaries of its step.

A captured step runs ``optimizer.step()`` as an opaque operator (`model_opt.capture.ops`), so the
graph shows neither the optimizer's state nor the tensors its update makes and drops while it runs
(Adam's ``exp_avg_sq.sqrt() / bias_correction`` and the like). Both are measured on a small copy of
each optimizer (same class, same hyperparameters, one parameter of its own), never on the user's
objects, whose state and step counts must stay as they are: the state as a number of parameter-sized
tensors, the temporaries as the most bytes a step holds at once, per parameter byte. The temporaries
become one tensor per ``optimizer_step`` operator, live while it runs, sized for the largest parameter
it updates (``torch.optim`` updates one parameter at a time).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from model_opt.capture.dataflow import DataflowGraph

#: The probe parameter's elements (1 MiB of float32): large enough that small bookkeeping tensors
#: (step counters, bias corrections) do not count.
_PROBE_NUMEL = 1 << 18
#: When an optimizer cannot be probed (its class takes other constructor arguments): Adam's figures.
_FALLBACK = (2.0, 2.0)


def probe(optimizer: torch.optim.Optimizer) -> tuple[float, float]:
    """``(state, temporaries)`` of `optimizer`'s first parameter group per parameter byte: the state
    its step keeps (Adam: 2) and the most its step holds at once beyond that (Adam on CPU: 2)."""
    from model_opt.reorder import _LiveBytes

    group = optimizer.param_groups[0]
    options = {k: v for k, v in group.items() if k != "params"}
    p = torch.zeros(_PROBE_NUMEL, requires_grad=True)
    try:
        copy = type(optimizer)([p], **options)
    except Exception:  # a custom optimizer's constructor: fall back to Adam's figures
        return _FALLBACK
    nbytes = p.numel() * p.element_size()
    p.grad = torch.full_like(p, 1e-3)
    copy.step()  # creates the state
    state = [v for v in copy.state[p].values() if isinstance(v, torch.Tensor) and v.numel() > 1]
    live = _LiveBytes(existing=[p, p.grad, *state])
    with live:
        copy.step()
    return sum(t.numel() * t.element_size() for t in state) / nbytes, live.peak / nbytes


def _as_tensors(nbytes: int, per_byte: float) -> list[int]:
    """`per_byte` of a parameter of `nbytes` as the optimizer keeps it: whole parameter-sized tensors
    (Adam: two), and one for a fraction left over."""
    whole, fraction = divmod(per_byte, 1.0)
    return [nbytes] * int(whole) + ([int(fraction * nbytes)] if fraction > 1e-3 else [])


def _trainable(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for g in opt.param_groups for p in g["params"] if p.requires_grad]


def state_sizes(
    optimizers: Sequence[torch.optim.Optimizer], probes: Sequence[tuple[float, float]]
) -> list[int]:
    """The bytes of each tensor of the optimizers' state after their first step: what an optimizer
    holds when it has stepped (each storage once), else, per parameter, `probes`' state per parameter
    byte (`_as_tensors`)."""
    from model_opt.capture.dataflow import storage_sizes

    out: list[int] = []
    for opt, (per_byte, _) in zip(optimizers, probes):
        held = storage_sizes(
            v for state in opt.state.values() for v in state.values() if isinstance(v, torch.Tensor)
        )
        if held:
            out += held
            continue
        for p in _trainable(opt):
            out += _as_tensors(p.numel() * p.element_size(), per_byte)
    return [n for n in out if n > 0]


def state_per_byte(
    optimizers: Sequence[torch.optim.Optimizer], probes: Sequence[tuple[float, float]], sizes: Sequence[int]
) -> float:
    """The optimizers' state per parameter byte: their state's `sizes` (`state_sizes`) over their
    parameters' bytes when they have stepped, else the largest probed."""
    params = [p for opt in optimizers for p in _trainable(opt)]
    if any(opt.state for opt in optimizers) and params:
        return sum(sizes) / sum(p.numel() * p.element_size() for p in params)
    return max((state for state, _ in probes), default=0.0)


def state_made_by(df: DataflowGraph, per_byte: float) -> list[tuple[int, int]]:
    """``(operator, bytes)`` of the optimizer state the first step of `df` makes: `per_byte` of each
    parameter an ``optimizer_step`` operator updates (`_as_tensors`, as `state_sizes` counts them), all
    made at the first of the operators of the same optimizer (``torch.optim`` creates a step's missing
    state for every parameter before it updates any)."""
    first: dict[Any, int] = {}
    out = []
    for i, node in enumerate(df.ops):
        if not _is_optimizer_step(node):
            continue
        at = first.setdefault(node.args[0], i)
        for p in node.args[2]:
            if "val" in p.meta:
                out += [
                    (at, n)
                    for n in _as_tensors(p.meta["val"].numel() * p.meta["val"].element_size(), per_byte)
                ]
    return [(i, n) for i, n in out if n > 0]


def _is_optimizer_step(node: Any) -> bool:
    return node.op == "call_function" and node.target is torch.ops.model_opt.optimizer_step.default


def add_step_temporaries(df: DataflowGraph, per_byte: float) -> DataflowGraph:
    """`df` with one tensor per ``optimizer_step`` operator: `per_byte` times its largest parameter's
    bytes, made and dropped by that operator (a tensor nobody reads lives while its producer runs)."""
    tensors = list(df.tensors)
    for i, node in enumerate(df.ops):
        if not _is_optimizer_step(node):
            continue
        params = node.args[2]
        sizes = [p.meta["val"].numel() * p.meta["val"].element_size() for p in params if "val" in p.meta]
        extra = int(per_byte * max(sizes, default=0))
        if extra > 0:
            tensors.append((extra, i, [], False))
    return DataflowGraph(df.ops, tensors, df.edges, df.resident_bytes, df.resident_detail, df.unpacks)
