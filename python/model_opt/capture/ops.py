"""Operators that keep a captured step faithful to eager PyTorch where tracing alone would not.

A step function is traced once under fake tensors (`model_opt.capture.step`); whatever Python does at
trace time happens once, and only the aten operators it dispatched are replayed. Two things a training
step does are not aten operators, and would be frozen at their trace-time values if traced naively:

* ``optimizer.step()``: its Python reads the learning rate, the step counters and the state dict at
  every call (an LR scheduler changes them between calls), creates the state lazily, and picks its
  foreach/fused kernels. ``model_opt::optimizer_step`` is an operator of the graph that, when the graph
  runs, hands the graph's gradients to the real parameters and calls the optimizer's own ``step()``:
  every optimizer runs exactly as eagerly, bit for bit. The optimizers of ``torch.optim`` update each
  parameter from its own gradient and state only, so their step is recorded as one operator per
  parameter, each calling ``step()`` with the parameter groups narrowed to that parameter: the
  scheduler may then run a parameter's update as soon as its gradient is final and free the gradient
  (MODel's early weight updates). Any other optimizer, or one with step hooks, is one operator.
* the RNG state: activation checkpointing saves the generator's state before the forward and restores
  it to recompute dropout masks in the backward. ``model_opt::get_rng_state`` and
  ``model_opt::set_rng_state`` make that save and restore operators of the graph, so that at run time
  they act on the real generator at the same point of the random-number stream as eagerly. They carry
  the ``nondeterministic_seeded`` tag, which the dataflow graph uses to keep every random operator in
  its captured order.
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import torch
import torch.optim.optimizer as _optim_base

from model_opt.capture.dataflow import CaptureError

LIB = torch.library.Library("model_opt", "FRAGMENT")
LIB.define("optimizer_step(int handle, int[] indices, Tensor(a!)[] params, Tensor?[] grads) -> ()")
LIB.define("get_rng_state(str device) -> Tensor", tags=(torch.Tag.nondeterministic_seeded,))
LIB.define("set_rng_state(str device, Tensor state) -> ()", tags=(torch.Tag.nondeterministic_seeded,))


class OptimizerBinding:
    """An optimizer and the real parameters a captured ``optimizer_step`` stands for, in the order of
    its ``param_groups`` at capture (the order of the operator's ``params`` and ``grads``)."""

    _handles = itertools.count()
    _live: weakref.WeakValueDictionary[int, OptimizerBinding] = weakref.WeakValueDictionary()

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.params: list[torch.Tensor] = [p for g in optimizer.param_groups for p in g["params"]]
        self.handle = next(OptimizerBinding._handles)
        OptimizerBinding._live[self.handle] = self

    @property
    def per_parameter(self) -> bool:
        """Whether the step may run one parameter at a time with the same result (see the module doc)."""
        opt = self.optimizer
        cls = type(opt)
        return (
            cls.__module__.startswith("torch.optim.")
            and cls is not torch.optim.LBFGS
            and not opt._optimizer_step_pre_hooks
            and not opt._optimizer_step_post_hooks
            and not _optim_base._global_optimizer_pre_hooks
            and not _optim_base._global_optimizer_post_hooks
        )

    def step(self, indices: Sequence[int], grads: Sequence[torch.Tensor | None]) -> None:
        """Runs the optimizer's ``step()`` for the parameters at ``indices`` with the given gradients;
        their ``.grad`` is left as it was (the captured step sets the final one)."""
        opt = self.optimizer
        chosen = [self.params[i] for i in indices]
        saved = [p.grad for p in chosen]
        whole = len(indices) == len(self.params)
        groups = [g["params"] for g in opt.param_groups]
        try:
            for p, g in zip(chosen, grads):
                p.grad = g
            if not whole:
                keep = {id(p) for p in chosen}
                for g in opt.param_groups:
                    g["params"] = [p for p in g["params"] if id(p) in keep]
            # The instance attribute when there is one: an LR scheduler wraps it to count the calls.
            opt.step()
        finally:
            for g, params in zip(opt.param_groups, groups):
                g["params"] = params
            for p, g in zip(chosen, saved):
                p.grad = g


def _optimizer_step(
    handle: int, indices: list[int], params: list[torch.Tensor], grads: list[torch.Tensor | None]
) -> None:
    binding = OptimizerBinding._live.get(handle)
    if binding is None:
        raise RuntimeError(f"model_opt: optimizer handle {handle} is gone (its captured step was freed)")
    binding.step(indices, grads)


def _optimizer_step_fake(
    handle: int, indices: list[int], params: list[torch.Tensor], grads: list[torch.Tensor | None]
) -> None:
    return None


_STATE_BYTES: dict[str, int] = {}


def _state_bytes(device: str) -> int:
    if device not in _STATE_BYTES:
        _STATE_BYTES[device] = int(_real_get_rng_state(device).numel())
    return _STATE_BYTES[device]


def _real_get_rng_state(device: str) -> torch.Tensor:
    if device == "cpu":
        return _ORIGINAL["torch.get_rng_state"]()
    return _ORIGINAL["torch.cuda.get_rng_state"](device)


def _get_rng_state(device: str) -> torch.Tensor:
    return _real_get_rng_state(device)


def _get_rng_state_fake(device: str) -> torch.Tensor:
    return torch.empty(_state_bytes(device), dtype=torch.uint8)


def _set_rng_state(device: str, state: torch.Tensor) -> None:
    if device == "cpu":
        _ORIGINAL["torch.set_rng_state"](state)
    else:
        _ORIGINAL["torch.cuda.set_rng_state"](state, device)


def _set_rng_state_fake(device: str, state: torch.Tensor) -> None:
    return None


_ORIGINAL: dict[str, Callable[..., Any]] = {
    "torch.get_rng_state": torch.get_rng_state,
    "torch.set_rng_state": torch.set_rng_state,
    "torch.cuda.get_rng_state": torch.cuda.get_rng_state,
    "torch.cuda.set_rng_state": torch.cuda.set_rng_state,
}

for _name, _impl, _fake in (
    ("optimizer_step", _optimizer_step, _optimizer_step_fake),
    ("get_rng_state", _get_rng_state, _get_rng_state_fake),
    ("set_rng_state", _set_rng_state, _set_rng_state_fake),
):
    LIB.impl(_name, _impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"model_opt::{_name}", _fake, lib=LIB)


def _cuda_device(device: Any = "cuda") -> str:
    if isinstance(device, int):
        return f"cuda:{device}"
    d = torch.device(device)
    return f"cuda:{d.index if d.index is not None else torch.cuda.current_device()}"


@contextlib.contextmanager
def traced_rng() -> Iterator[None]:
    """While tracing: the generators' state functions become graph operators (see the module doc), and
    ``torch.manual_seed`` is refused (reseeding inside a step would happen once, at capture)."""

    def refuse_seed(*args: Any, **kwargs: Any) -> Any:
        raise CaptureError(
            "the step function calls torch.manual_seed: seeding inside a captured step would happen "
            "once at capture, not at every call; seed outside the step"
        )

    patches = {
        (torch, "get_rng_state"): lambda: torch.ops.model_opt.get_rng_state("cpu"),
        (torch, "set_rng_state"): lambda state: torch.ops.model_opt.set_rng_state("cpu", state),
        (torch.random, "get_rng_state"): lambda: torch.ops.model_opt.get_rng_state("cpu"),
        (torch.random, "set_rng_state"): lambda state: torch.ops.model_opt.set_rng_state("cpu", state),
        (torch.cuda, "get_rng_state"): lambda device="cuda": torch.ops.model_opt.get_rng_state(
            _cuda_device(device)
        ),
        (torch.cuda, "set_rng_state"): lambda state, device="cuda": torch.ops.model_opt.set_rng_state(
            _cuda_device(device), state
        ),
        (torch, "manual_seed"): refuse_seed,
        (torch.random, "manual_seed"): refuse_seed,
    }
    saved = {key: getattr(*key) for key in patches}
    try:
        for (owner, name), fn in patches.items():
            setattr(owner, name, fn)
        yield
    finally:
        for (owner, name), fn in saved.items():
            setattr(owner, name, fn)


@contextlib.contextmanager
def traced_optimizers(
    optimizers: Sequence[torch.optim.Optimizer],
    bindings: Sequence[OptimizerBinding],
    placeholder: Callable[[torch.Tensor], torch.Tensor],
) -> Iterator[None]:
    """While tracing: each optimizer's ``param_groups`` hold the traced parameters (so ``zero_grad`` and
    code reading the groups see the graph's tensors), and ``step()`` records one ``optimizer_step``
    operator instead of running. ``placeholder`` maps a real parameter to its traced tensor."""
    saved_groups = [[g["params"] for g in opt.param_groups] for opt in optimizers]
    saved_steps = [opt.__dict__.get("step") for opt in optimizers]
    try:
        for opt, binding in zip(optimizers, bindings):
            traced = [placeholder(p) for p in binding.params]
            it = iter(traced)
            for g in opt.param_groups:
                g["params"] = [next(it) for _ in g["params"]]

            def record(
                *args: Any,
                _traced: list[torch.Tensor] = traced,
                _handle: int = binding.handle,
                _per_parameter: bool = binding.per_parameter,
                _name: str = type(opt).__name__,
                **kwargs: Any,
            ) -> None:
                if args or kwargs:
                    raise CaptureError(
                        f"{_name}.step() was called with arguments (a closure?): a captured step "
                        "cannot re-evaluate the model inside the optimizer; LBFGS is not supported"
                    )
                if _per_parameter:
                    for i, p in enumerate(_traced):
                        if p.grad is not None:  # eager skips a parameter without a gradient
                            torch.ops.model_opt.optimizer_step(_handle, [i], [p], [p.grad])
                else:
                    all_indices = list(range(len(_traced)))
                    torch.ops.model_opt.optimizer_step(
                        _handle, all_indices, _traced, [p.grad for p in _traced]
                    )

            opt.step = record  # type: ignore[method-assign]
        yield
    finally:
        for opt, groups, step in zip(optimizers, saved_groups, saved_steps):
            for g, params in zip(opt.param_groups, groups):
                g["params"] = params
            if step is None:
                opt.__dict__.pop("step", None)
            else:
                opt.step = step  # type: ignore[method-assign]
