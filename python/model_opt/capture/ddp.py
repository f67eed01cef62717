"""DistributedDataParallel inside a captured step: its communication as operators of the graph.

Eager DDP communicates from hooks: before the forward it broadcasts the module's buffers from rank 0
(``broadcast_buffers``), and during the backward its reducer all-reduces each gradient, scaled by
``1 / world_size``, as buckets fill. A traced graph would replay neither. Here, while tracing, the DDP
wrapper's ``forward`` runs the wrapped module directly and records ``model_opt::ddp_broadcast_buffers``
where DDP would broadcast, and every ``backward()`` ends with one ``model_opt::ddp_all_reduce`` per
gradient of the DDP module's parameters, where the reducer would have reduced it (the scheduler may move
each one up to where its gradient is final, as the reducer's buckets overlap the backward).

The reduction is DDP's: the gradient is multiplied by ``1 / world_size`` as the reducer does, then summed
across ranks. With two ranks (and any power-of-two world size) the result is bit-identical to DDP's;
with others, the sum may associate differently than DDP's buckets do. The collectives carry the
``nondeterministic_seeded`` tag, so they keep their captured relative order in every schedule: every
rank issues them in the same order.

Supported: DDP's defaults (no communication hook, no ``find_unused_parameters``, no ``static_graph``, no
join, no mixed precision, no ``no_sync`` across a capture boundary it cannot see — ``no_sync`` itself is
guarded). The rest is refused with a `CaptureError` naming the option.
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from model_opt.capture.dataflow import CaptureError
from model_opt.capture.ops import LIB

DDP = nn.parallel.DistributedDataParallel

LIB.define(
    "ddp_all_reduce(int handle, Tensor(a!) grad) -> ()",
    tags=(torch.Tag.nondeterministic_seeded,),
)
LIB.define(
    "ddp_broadcast_buffers(int handle, Tensor(a!)[] buffers) -> ()",
    tags=(torch.Tag.nondeterministic_seeded,),
)


class DdpBinding:
    """A DDP module a captured step uses: its process group, for the operators' handles."""

    _handles = itertools.count()
    _live: weakref.WeakValueDictionary[int, DdpBinding] = weakref.WeakValueDictionary()

    def __init__(self, ddp: DDP) -> None:
        refuse_unsupported(ddp)
        self.ddp = ddp
        self.handle = next(DdpBinding._handles)
        DdpBinding._live[self.handle] = self

    def all_reduce(self, grad: torch.Tensor) -> None:
        grad.mul_(1.0 / self.ddp.process_group.size())  # the reducer's scaling, a double wrapped scalar
        dist.all_reduce(grad, group=self.ddp.process_group)

    def broadcast_buffers(self, buffers: list[torch.Tensor]) -> None:
        dist._broadcast_coalesced(self.ddp.process_group, buffers, self.ddp.broadcast_bucket_size, 0)


def _binding(handle: int) -> DdpBinding:
    binding = DdpBinding._live.get(handle)
    if binding is None:
        raise RuntimeError(f"model_opt: DDP handle {handle} is gone (its captured step was freed)")
    return binding


def _all_reduce(handle: int, grad: torch.Tensor) -> None:
    _binding(handle).all_reduce(grad)


def _broadcast(handle: int, buffers: list[torch.Tensor]) -> None:
    _binding(handle).broadcast_buffers(buffers)


for _name, _impl in (("ddp_all_reduce", _all_reduce), ("ddp_broadcast_buffers", _broadcast)):
    LIB.impl(_name, _impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"model_opt::{_name}", lambda *args: None, lib=LIB)


def refuse_unsupported(ddp: DDP) -> None:
    """Raises `CaptureError` naming the first DDP option this capture does not reproduce."""
    checks = [
        (ddp._comm_hooks or ddp._delay_all_reduce_all_params, "a communication hook"),
        (hasattr(ddp, "buffer_hook"), "a buffer communication hook"),
        (ddp.find_unused_parameters, "find_unused_parameters=True"),
        (ddp.static_graph, "static_graph=True"),
        (ddp.mixed_precision is not None, "mixed_precision"),
        (ddp._use_python_reducer, "the Python reducer"),
        (ddp._join_config.enable, "Join"),
        (ddp.device_ids and len(ddp.device_ids) > 0, "device_ids (inputs moved by DDP)"),
    ]
    for bad, what in checks:
        if bad:
            raise CaptureError(
                f"DistributedDataParallel with {what} is not supported by optimize(): its communication "
                "would not be reproduced; use DDP's defaults, or model_opt's allocator runtime "
                "(model_opt.step()), which works with every DDP option"
            )


def context_of_ddps(ddps: Sequence[DDP]) -> tuple[tuple[bool, bool], ...]:
    """The DDP flags that decide the communication of a step (``no_sync`` sets the first)."""
    return tuple((m.require_backward_grad_sync, m.require_forward_param_sync) for m in ddps)


@contextlib.contextmanager
def traced_ddps(bindings: Sequence[DdpBinding], effects: list[tuple[DDP, bool]]) -> Iterator[None]:
    """While tracing: each DDP's ``forward`` records its buffer broadcast and runs the wrapped module;
    each ``backward()`` then records the all-reduce of the gradients of the DDPs whose forward asked
    for it. ``effects`` receives DDP's Python state after each forward (``require_forward_param_sync``),
    which `Binding.finish` sets again after every run, as eager DDP would."""
    if not bindings:
        yield
        return
    pending: dict[int, DdpBinding] = {}
    saved_forwards = [b.ddp.__dict__.get("forward") for b in bindings]
    saved_backward = (torch.Tensor.backward, torch.autograd.backward)

    def forward_of(binding: DdpBinding) -> Callable[..., Any]:
        ddp = binding.ddp

        def forward(*inputs: Any, **kwargs: Any) -> Any:
            if ddp.will_sync_module_buffers():
                # The buffers DDP broadcasts (`_assign_modules_buffers`), here the traced ones.
                ignored = ddp.parameters_to_ignore
                traced = [b for name, b in ddp.module.named_buffers() if name not in ignored]
                torch.ops.model_opt.ddp_broadcast_buffers(binding.handle, traced)
            out = ddp.module(*inputs, **kwargs)
            sync = torch.is_grad_enabled() and ddp.require_backward_grad_sync
            if sync:
                pending[binding.handle] = binding
            effects.append((ddp, sync))
            return out

        return forward

    def reduce_pending() -> None:
        for binding in list(pending.values()):
            for p in binding.ddp.module.parameters():
                if p.requires_grad and p.grad is not None:
                    torch.ops.model_opt.ddp_all_reduce(binding.handle, p.grad)
        pending.clear()

    def tensor_backward(self: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        saved_backward[0](self, *args, **kwargs)
        reduce_pending()

    def autograd_backward(*args: Any, **kwargs: Any) -> None:
        saved_backward[1](*args, **kwargs)
        reduce_pending()

    try:
        for binding in bindings:
            binding.ddp.forward = forward_of(binding)  # type: ignore[method-assign]
        torch.Tensor.backward = tensor_backward  # type: ignore[method-assign]
        torch.autograd.backward = autograd_backward
        yield
    finally:
        torch.Tensor.backward, torch.autograd.backward = saved_backward  # type: ignore[method-assign]
        for binding, fwd in zip(bindings, saved_forwards):
            if fwd is None:
                binding.ddp.__dict__.pop("forward", None)
            else:
                binding.ddp.forward = fwd  # type: ignore[method-assign]
