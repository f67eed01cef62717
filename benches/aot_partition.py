"""The baseline of AOTAutograd's partitioner for `benches/remat.py`: the simulated peak of a training
step split into forward and backward graphs by ``torch._functorch``'s ``default_partition`` (save what
autograd saves) and ``min_cut_rematerialization_partition`` (what ``torch.compile`` uses: recompute cheap
operators when the min cut of the joint graph says so; it takes no memory budget).

The model's loss as a function of its parameters, buffers and inputs goes through ``aot_function`` with
a partition function that keeps the two graphs and compilers that stop before anything runs; the peak
is counted over the forward graph, then the backward graph, by storage (views share their base's),
each freed after its last reader. The parameters, buffers and inputs stay live throughout, the saved
tensors from the forward graph until their last reader in the backward graph, the gradients to the
end, as in the captured step that `model_opt.step_plan.peak_of_order` counts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn
from torch._functorch.aot_autograd import aot_function
from torch._functorch.partitioners import default_partition, min_cut_rematerialization_partition

PARTITIONS: dict[str, Callable[..., tuple[fx.GraphModule, fx.GraphModule]]] = {
    "default": default_partition,
    "min_cut": min_cut_rematerialization_partition,
}


class _Stop(Exception):
    """Raised by the compilers: the graphs are all that is wanted."""


def _stop(gm: fx.GraphModule, inputs: Any) -> Any:
    raise _Stop


def _storages(val: Any) -> list[tuple[int, int]]:
    """``(storage identity, bytes)`` of the strided tensors of a node's value."""
    out = []
    for v in val if isinstance(val, (tuple, list)) else [val]:
        if isinstance(v, torch.Tensor) and v.layout == torch.strided:
            s = v.untyped_storage()
            out.append((s._cdata, s.nbytes()))
    return out


def _values(node: fx.Node) -> list[tuple[int, int]]:
    return _storages(node.meta.get("val"))


def partitioned(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    inputs: tuple[torch.Tensor, ...],
    targets: Any,
    how: str,
) -> tuple[fx.GraphModule, fx.GraphModule]:
    """The forward and backward graphs of the model's training loss as partition `how` splits them."""
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    got: list[tuple[fx.GraphModule, fx.GraphModule]] = []

    def loss(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], *args: Any) -> torch.Tensor:
        out = torch.func.functional_call(model, {**params, **buffers}, args[:-1])
        return loss_fn(out, args[-1])

    def keep(
        joint: fx.GraphModule, joint_inputs: Any, **kwargs: Any
    ) -> tuple[fx.GraphModule, fx.GraphModule]:
        fw, bw = PARTITIONS[how](joint, joint_inputs, **kwargs)
        got.append((fw, bw))
        return fw, bw

    compiled = aot_function(loss, fw_compiler=_stop, bw_compiler=_stop, partition_fn=keep)
    try:
        compiled(params, buffers, *inputs, targets)
    except _Stop:
        pass
    return got[0]


def peak_bytes(fw: fx.GraphModule, bw: fx.GraphModule) -> int:
    """The most bytes live at once over the forward graph, then the backward graph (module doc)."""
    fw_nodes, bw_nodes = list(fw.graph.nodes), list(bw.graph.nodes)
    resident = {s for n in fw_nodes if n.op == "placeholder" for s, _ in _values(n)}
    saved = {s for n in fw_nodes if n.op == "output" for a in n.all_input_nodes for s, _ in _values(a)}
    # The backward graph's inputs are the forward graph's saved values, by name (and the tangents).
    by_name = {n.name: n for n in fw_nodes}
    for n in bw_nodes:
        if n.op == "placeholder" and n.name in by_name:
            n.meta["val"] = by_name[n.name].meta.get("val")
    live: dict[int, int] = {}
    peak = 0
    for nodes, kept in ((fw_nodes, saved | resident), (bw_nodes, resident)):
        last: dict[int, int] = {}
        for i, n in enumerate(nodes):
            end = len(nodes) if n.op == "output" else i  # the graph's results live past it
            for a in n.all_input_nodes:
                for s, _ in _values(a):
                    last[s] = end
        for i, n in enumerate(nodes):  # a value nobody reads lives while its producer runs
            for s, _ in _values(n):
                last.setdefault(s, i)
        for i, n in enumerate(nodes):
            for s, nbytes in _values(n):
                live.setdefault(s, nbytes)
            peak = max(peak, sum(live.values()))
            for s in [s for s in live if last.get(s, -1) == i and s not in kept]:
                del live[s]
    return peak


def peaks(
    model: nn.Module, loss_fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], targets: Any
) -> dict[str, int]:
    """`peak_bytes` under each of `PARTITIONS`."""
    return {how: peak_bytes(*partitioned(model, loss_fn, inputs, targets, how)) for how in PARTITIONS}
