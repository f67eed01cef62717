"""Capture a user's training-step function, as eager PyTorch would run it, into one aten graph.

The function is called once under ``make_fx`` with fake tensors (no compute) with everything it reaches
swapped for graph inputs:

* the parameters and buffers of its modules (`torch.nn.utils.stateless._reparametrize_module`, weights
  tied as they are), the parameters as leaf tensors that require grad, so ``loss.backward()`` traces the
  backward and leaves each traced parameter's ``.grad`` as eagerly;
* the gradients already present (``.grad`` from an earlier call that did not zero them), so gradient
  accumulation across calls works;
* the optimizers' ``param_groups``, and ``step()`` recorded as one ``model_opt::optimizer_step`` operator
  that runs the optimizer's own ``step()`` when the graph runs (`model_opt.capture.ops`);
* the RNG state functions, recorded as operators (activation checkpointing's recomputation).

Code between backward and the update (``clip_grad_norm_``, ``zero_grad``, anything on tensors) is traced
like the rest. The graph returns the function's tensor results and every parameter's final ``.grad``;
`CapturedStep.run` calls it on the real tensors and leaves ``.grad`` as the eager step would.

What Python does at trace time happens once: a step whose Python decides on values that change between
calls (``loss.item()``, a counter, reseeding) is refused or guarded (`model_opt.capture.guards`), never
replayed silently. DistributedDataParallel's communication becomes operators of the graph
(`model_opt.capture.ddp`); other data-parallel wrappers are refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensor
from torch.nn.utils.stateless import _reparametrize_module
from torch.utils import _pytree as pytree

from model_opt.capture.dataflow import (
    CaptureError,
    DataflowGraph,
    LossFn,
    Tensors,
    _as_tuple,
    _fake_trace,
    build_dataflow,
)
from model_opt.capture.ddp import DDP, DdpBinding, traced_ddps
from model_opt.capture.ops import OptimizerBinding, traced_optimizers, traced_rng

#: Data-parallel wrappers whose communication a captured graph does not reproduce (DDP's it does:
#: `model_opt.capture.ddp`).
_REFUSED_WRAPPERS = ("DataParallel", "FullyShardedDataParallel")


@dataclass
class StepState:
    """The modules and optimizers a step function uses, and the tensors they hold, deduplicated."""

    modules: list[nn.Module]
    optimizers: list[torch.optim.Optimizer]
    #: The DistributedDataParallel modules among them (`model_opt.capture.ddp`).
    ddps: list[DDP] = field(default_factory=list)
    #: Every module under ``modules``, each once, in ``named_modules`` order.
    submodules: list[nn.Module] = field(default_factory=list)
    #: Every parameter of the modules and the optimizers (trainable or frozen), each once.
    params: list[torch.Tensor] = field(default_factory=list)
    buffers: list[torch.Tensor] = field(default_factory=list)
    #: Per module: its own names of its parameters and buffers -> index into ``params`` / ``buffers``.
    param_names: list[dict[str, int]] = field(default_factory=list)
    buffer_names: list[dict[str, int]] = field(default_factory=list)

    @classmethod
    def of(cls, modules: list[nn.Module], optimizers: list[torch.optim.Optimizer]) -> StepState:
        """Collects the tensors; raises `CaptureError` for a data-parallel wrapper."""
        ddps = []
        submodules = []
        for root in modules:
            for name, m in root.named_modules():
                submodules.append(m)
                if isinstance(m, DDP):
                    ddps.append(m)
                elif type(m).__name__ in _REFUSED_WRAPPERS:
                    where = f" (at '{name}')" if name else ""
                    raise CaptureError(
                        f"the step uses a {type(m).__name__}{where}: its communication runs in hooks "
                        "that a captured graph does not replay, so the ranks would diverge; use "
                        "DistributedDataParallel, or model_opt's allocator runtime (model_opt.step())"
                    )
        state = cls(modules, optimizers, ddps=ddps, submodules=submodules)
        p_index: dict[int, int] = {}
        b_index: dict[int, int] = {}
        for m in modules:
            state.param_names.append(_add_unique(m.named_parameters(), state.params, p_index))
            state.buffer_names.append(_add_unique(m.named_buffers(), state.buffers, b_index))
        for opt in optimizers:
            _add_unique(((str(i), p) for i, p in enumerate(_params_of(opt))), state.params, p_index)
        return state


def _params_of(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for g in optimizer.param_groups for p in g["params"]]


def _add_unique(
    named: Iterable[tuple[str, torch.Tensor]], tensors: list[torch.Tensor], index: dict[int, int]
) -> dict[str, int]:
    """Appends to ``tensors`` the tensors not in it yet (``index``: id -> position); returns each name's
    position."""
    names: dict[str, int] = {}
    for name, t in named:
        if id(t) not in index:
            index[id(t)] = len(tensors)
            tensors.append(t)
        names[name] = index[id(t)]
    return names


@dataclass
class Binding:
    """How the graph's inputs and outputs map to the real tensors of a call."""

    state: StepState
    #: Indices into ``state.params`` of the parameters whose ``.grad`` is a graph input.
    grads_in: list[int]
    in_spec: pytree.TreeSpec
    #: Positions of the tensor leaves among the flattened ``(args, kwargs)``.
    tensor_leaves: list[int]
    out_spec: pytree.TreeSpec | None = None
    #: The function's results that no tensor computes, by leaf position (constant for this context).
    out_constants: dict[int, Any] = field(default_factory=dict)
    #: How many results the graph computes (tensors, and numbers read from tensors), before the grads.
    num_tensor_outputs: int = 0
    optimizers: list[OptimizerBinding] = field(default_factory=list)
    ddps: list[DdpBinding] = field(default_factory=list)
    #: DDP's Python state after the step (``require_forward_param_sync``), set again after every run.
    ddp_effects: dict[int, tuple[DDP, bool]] = field(default_factory=dict)

    def flat_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        """The graph's arguments for one call: parameters, buffers, present gradients, input tensors."""
        leaves, _ = pytree.tree_flatten((args, kwargs))
        params = self.state.params
        return [
            *params,
            *self.state.buffers,
            *(params[i].grad for i in self.grads_in),
            *(leaves[i] for i in self.tensor_leaves),
        ]

    def finish(self, outputs: Any) -> Any:
        """Sets every parameter's ``.grad`` to the graph's, and returns the function's result."""
        for ddp, sync in self.ddp_effects.values():
            ddp.require_forward_param_sync = sync
        results, grads = outputs[: self.num_tensor_outputs], outputs[self.num_tensor_outputs :]
        for p, g in zip(self.state.params, grads):
            if p.grad is not g:
                p.grad = g
        leaves: list[Any] = []
        it = iter(results)
        for i in range(len(results) + len(self.out_constants)):
            leaves.append(self.out_constants[i] if i in self.out_constants else next(it))
        assert self.out_spec is not None
        return pytree.tree_unflatten(leaves, self.out_spec)


@dataclass
class CapturedStep:
    """A traced step: the FX graph, its dataflow graph, and how to call it on real tensors."""

    graph_module: fx.GraphModule
    dataflow: DataflowGraph
    binding: Binding

    def run(self, graph_module: fx.GraphModule, *args: Any, **kwargs: Any) -> Any:
        """Runs ``graph_module`` (this graph or a reordering of it) on a call's arguments: the step's
        updates happen in place, ``.grad`` is left as eagerly, and the function's result is returned."""
        flat = self.binding.flat_args(args, kwargs)
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            # The graph holds autocast's casts already: running it under autocast would cast again.
            for device in ("cpu", "cuda"):
                if torch.is_autocast_enabled(device):
                    stack.enter_context(torch.autocast(device, enabled=False))
            outputs = graph_module(*flat)
        return self.binding.finish(outputs)


def _check_constants(gm: fx.GraphModule) -> None:
    """Refuses a graph that holds a parameter as a constant: a module the step reaches in a way
    `model_opt.capture.discover` does not follow, whose gradients and updates would be lost."""
    found = []
    for node in gm.graph.nodes:
        value = getattr(gm, str(node.target), None) if node.op == "get_attr" else None
        if isinstance(value, torch.Tensor) and (isinstance(value, nn.Parameter) or value.requires_grad):
            found.append(value)
            # The trace's backward left a fake gradient on the real parameter: take it back.
            if isinstance(value.grad, FakeTensor):
                value.grad = None
    if found:
        shapes = ", ".join(str(tuple(t.shape)) for t in found[:3]) + (" ..." if len(found) > 3 else "")
        raise CaptureError(
            f"the step uses {len(found)} parameters (shapes {shapes}) of a module model_opt did not find "
            "from the function (its closure, the globals it names, the objects it holds); pass the "
            "modules explicitly: optimize(step, ..., modules=[model])"
        )


def capture_step(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], state: StepState
) -> CapturedStep:
    """Traces one call ``fn(*args, **kwargs)`` as described in the module doc. Nothing runs for real: the
    model, the optimizer and the RNG are left as they were. Raises `CaptureError`."""
    leaves, in_spec = pytree.tree_flatten((args, kwargs))
    tensor_leaves = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)]
    params, buffers = state.params, state.buffers
    grads_in = [i for i, p in enumerate(params) if p.grad is not None]
    bindings = [OptimizerBinding(opt) for opt in state.optimizers]
    ddp_bindings = [DdpBinding(ddp) for ddp in state.ddps]
    binding = Binding(state, grads_in, in_spec, tensor_leaves, optimizers=bindings, ddps=ddp_bindings)
    ddp_effects: list[tuple[DDP, bool]] = []
    n_p, n_b, n_g = len(params), len(buffers), len(grads_in)

    def traced(*flat: torch.Tensor) -> tuple[Any, ...]:
        ps, bs = flat[:n_p], flat[n_p : n_p + n_b]
        for i, g in zip(grads_in, flat[n_p + n_b : n_p + n_b + n_g]):
            ps[i].grad = g
        call_leaves = list(leaves)
        for pos, x in zip(tensor_leaves, flat[n_p + n_b + n_g :]):
            call_leaves[pos] = x
        call_args, call_kwargs = pytree.tree_unflatten(call_leaves, in_spec)
        by_id = {id(p): ps[i] for i, p in enumerate(params)}
        with contextlib.ExitStack() as stack:
            for m, pn, bn in zip(state.modules, state.param_names, state.buffer_names):
                swap = {**{n: ps[i] for n, i in pn.items()}, **{n: bs[i] for n, i in bn.items()}}
                stack.enter_context(_reparametrize_module(m, swap, tie_weights=True, strict=False))
            stack.enter_context(traced_optimizers(state.optimizers, bindings, lambda p: by_id[id(p)]))
            stack.enter_context(traced_rng())
            stack.enter_context(traced_ddps(ddp_bindings, ddp_effects))
            result = fn(*call_args, **call_kwargs)
        out_leaves, binding.out_spec = pytree.tree_flatten(result)
        computed: list[Any] = []
        binding.out_constants = {}
        for i, leaf in enumerate(out_leaves):
            if isinstance(leaf, torch.Tensor):
                computed.append(leaf.detach())
            elif isinstance(leaf, (torch.SymInt, torch.SymFloat, torch.SymBool)):
                computed.append(leaf)  # read from a tensor (``loss.item()``): computed at every call
            else:
                binding.out_constants[i] = leaf
        binding.num_tensor_outputs = len(computed)
        return (*computed, *(p.grad for p in ps))

    trace_args = [
        *(p.detach().requires_grad_(p.requires_grad) for p in params),
        *(b.detach() for b in buffers),
        *(params[i].grad.detach() for i in grads_in),  # type: ignore[union-attr]
        *(leaves[i] for i in tensor_leaves),
    ]
    gm = _fake_trace(traced, trace_args)
    binding.ddp_effects = {id(ddp): (ddp, sync) for ddp, sync in ddp_effects}
    _check_constants(gm)
    return CapturedStep(gm, build_dataflow(gm), binding)


def model_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    autocast: torch.dtype | None = None,
) -> Callable[[Tensors, Tensors], torch.Tensor]:
    """The step function of ``optimize(model, optimizer, loss_fn, inputs, targets)``: zero_grad, forward,
    loss, backward, ``optimizer.step()``, zero_grad; it returns the loss, detached. With `autocast`, the
    forward pass and the loss run under ``torch.autocast`` to that type on the inputs' device, as
    PyTorch's AMP recipe writes it (bfloat16 needs no gradient scaler)."""

    def train_step(inputs: Tensors, targets: Tensors) -> torch.Tensor:
        xs, ys = _as_tuple(inputs), _as_tuple(targets)
        optimizer.zero_grad(set_to_none=True)
        mixed = torch.autocast(xs[0].device.type, dtype=autocast) if autocast else contextlib.nullcontext()
        with mixed:
            loss = loss_fn(model(*xs), ys[0] if len(ys) == 1 else ys)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return train_step


def forward_step(model: nn.Module) -> Callable[[Tensors], Any]:
    """A forward pass without gradients, as a step function ``forward(inputs)``."""

    def forward(inputs: Tensors) -> Any:
        with torch.no_grad():
            return model(*_as_tuple(inputs))

    return forward


def capture_training_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn, inputs: Tensors, targets: Tensors
) -> CapturedStep:
    """Captures `model_step`; run it as ``captured.run(gm, inputs, targets)``."""
    modules = [model, *([loss_fn] if isinstance(loss_fn, nn.Module) else [])]
    state = StepState.of(modules, [optimizer])
    return capture_step(model_step(model, optimizer, loss_fn), (inputs, targets), {}, state)


def capture_inference_step(model: nn.Module, inputs: Tensors) -> CapturedStep:
    """Captures `forward_step`; run it as ``captured.run(gm, inputs)``."""
    return capture_step(forward_step(model), (inputs,), {}, StepState.of([model], []))
