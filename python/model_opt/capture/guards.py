"""What a captured step depends on besides its tensors' values: the call's context.

A captured graph bakes in everything that decided which operators ran: the inputs' shapes and dtypes,
autocast, grad mode, the modules' train/eval mode, their plain attributes and hooks, the default dtype,
the deterministic-algorithms flag, which parameters hold a gradient, which parameters the optimizers
step. `context_of` reads all of it at each call; a call
whose context differs from every captured one is captured again (`OptimizedStep`), and `describe_change`
says what changed, for the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from model_opt.capture.dataflow import CaptureError
from model_opt.capture.ddp import context_of_ddps
from model_opt.capture.step import StepState

#: One entry per aspect of the context, named for `describe_change`.
Context = tuple[tuple[str, Any], ...]

_AUTOCAST_DEVICES = ("cpu", "cuda")


def _leaf_key(i: int, leaf: Any) -> Any:
    if isinstance(leaf, torch.Tensor):
        if leaf.requires_grad:
            raise CaptureError(
                f"argument leaf {i} requires grad: a captured step computes gradients of the model's "
                "parameters only; pass inputs that do not require grad"
            )
        return ("tensor", tuple(leaf.shape), leaf.dtype, leaf.device.type, leaf.device.index, leaf.layout)
    try:
        hash(leaf)
    except TypeError:
        raise CaptureError(
            f"argument leaf {i} is a {type(leaf).__name__}, which model_opt cannot compare between calls; "
            "pass tensors, numbers, strings, or tuples, lists and dicts of them"
        ) from None
    return ("value", type(leaf).__name__, leaf)


_PRIMITIVE = (bool, int, float, str, type(None))
_HOOKS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
)


def _primitives(obj: Any) -> tuple[tuple[str, Any], ...]:
    # ``training`` is an aspect of its own ("train/eval mode").
    return tuple((k, v) for k, v in vars(obj).items() if isinstance(v, _PRIMITIVE) and k != "training")


def _module_key(m: nn.Module) -> Any:
    """What of a module its forward may read besides tensors: its plain attributes (a temperature, a
    flag) and how many hooks it has."""
    return (_primitives(m), tuple(len(getattr(m, name, ())) for name in _HOOKS))


def _configs_key(submodules: Sequence[nn.Module]) -> Any:
    """The plain attributes of the modules' ``config`` objects (Hugging Face models), each config once."""
    configs = {id(c): c for m in submodules if hasattr(c := getattr(m, "config", None), "__dict__")}
    return tuple(_primitives(c) for c in configs.values())


def context_of(args: tuple[Any, ...], kwargs: dict[str, Any], state: StepState) -> Context:
    """The context of one call (see the module doc). Raises `CaptureError` for an argument that cannot
    be part of it."""
    leaves, spec = pytree.tree_flatten((args, kwargs))
    autocast = tuple(
        (d, torch.get_autocast_dtype(d) if torch.is_autocast_enabled(d) else None) for d in _AUTOCAST_DEVICES
    )
    params, tensors, submodules = state.params, (*state.params, *state.buffers), state.submodules
    return (
        ("argument structure", str(spec)),
        ("argument shapes, dtypes and values", tuple(_leaf_key(i, x) for i, x in enumerate(leaves))),
        ("autocast", autocast),
        ("grad mode", torch.is_grad_enabled()),
        ("train/eval mode", tuple(m.training for m in submodules)),
        (
            "module attributes and hooks",
            (tuple(_module_key(m) for m in submodules), _configs_key(submodules)),
        ),
        ("default dtype", torch.get_default_dtype()),
        ("deterministic algorithms", torch.are_deterministic_algorithms_enabled()),
        ("DDP synchronization (no_sync)", context_of_ddps(state.ddps)),
        (
            "parameters (identity, shape, dtype, device, requires_grad)",
            tuple((id(t), tuple(t.shape), t.dtype, t.device, t.requires_grad) for t in tensors),
        ),
        (
            "gradients present",
            tuple(
                None if p.grad is None else (tuple(p.grad.shape), p.grad.dtype, tuple(p.grad.stride()))
                for p in params
            ),
        ),
        (
            "optimizer parameters",
            tuple(id(p) for o in state.optimizers for g in o.param_groups for p in g["params"]),
        ),
    )


def describe_change(old: Context, new: Context) -> str:
    """The names of the aspects that differ between two contexts, e.g. ``"argument shapes, dtypes and
    values"``."""
    changed = [name for (name, a), (_, b) in zip(old, new) if a != b]
    return ", ".join(changed) if changed else "nothing"
