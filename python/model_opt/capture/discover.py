"""Find the modules and optimizers a step function uses.

A step function reaches its model and optimizer the way Python code does: through its closure, its
default arguments, the globals it names, the object a bound method belongs to, a ``functools.partial``'s
arguments, and the attributes of objects it holds (a trainer's ``self.model``). `find_state` follows
those references a few levels deep, without calling anything, and returns the outermost modules and
every optimizer it meets.
What it cannot see (a module reached only through a call) can be passed to ``optimize`` explicitly.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

_MAX_DEPTH = 4
_MAX_ITEMS = 256


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _is_library(obj: Any) -> bool:
    """Functions and classes of torch and the standard library hold no user state worth following."""
    module = getattr(obj, "__module__", None) or ""
    return module.split(".")[0] in ("torch", "builtins", "functools", "typing", "collections", "math")


def find_state(fn: Any) -> tuple[list[nn.Module], list[torch.optim.Optimizer]]:
    """The outermost ``nn.Module``s and the optimizers reachable from ``fn`` (see the module doc)."""
    modules: list[nn.Module] = []
    optimizers: list[torch.optim.Optimizer] = []
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if id(obj) in seen or depth > _MAX_DEPTH:
            return
        seen.add(id(obj))
        if isinstance(obj, nn.Module):
            modules.append(obj)
        elif isinstance(obj, torch.optim.Optimizer):
            optimizers.append(obj)
        elif isinstance(obj, torch.optim.lr_scheduler.LRScheduler):
            visit(obj.optimizer, depth + 1)
        elif isinstance(obj, (torch.Tensor, types.ModuleType, type, str, bytes, int, float)) or obj is None:
            return
        elif isinstance(obj, functools.partial):
            for item in (obj.func, *obj.args, *obj.keywords.values()):
                visit(item, depth + 1)
        elif inspect.ismethod(obj):
            visit(obj.__func__, depth)
            visit(obj.__self__, depth + 1)
        elif inspect.isfunction(obj):
            if _is_library(obj):
                return
            for item in (*(obj.__defaults__ or ()), *(obj.__kwdefaults__ or {}).values()):
                visit(item, depth + 1)
            for cell in obj.__closure__ or ():
                try:
                    visit(cell.cell_contents, depth + 1)
                except ValueError:  # an empty cell
                    pass
            for name in sorted(_code_names(obj.__code__)):
                if name in obj.__globals__:
                    visit(obj.__globals__[name], depth + 1)
        elif isinstance(obj, (list, tuple, set, frozenset)):
            for item in list(obj)[:_MAX_ITEMS]:
                visit(item, depth + 1)
        elif isinstance(obj, dict):
            for item in list(obj.values())[:_MAX_ITEMS]:
                visit(item, depth + 1)
        elif hasattr(obj, "__dict__") and not _is_library(type(obj)):
            for item in list(vars(obj).values())[:_MAX_ITEMS]:
                visit(item, depth + 1)

    visit(fn, 0)
    return outermost(modules), optimizers


def state_of(
    fn: Any,
    modules: Sequence[nn.Module] | None = None,
    optimizers: Sequence[torch.optim.Optimizer] | None = None,
) -> tuple[list[nn.Module], list[torch.optim.Optimizer]]:
    """What the step function `fn` uses: `modules` and `optimizers` as given, and what is not given
    found from `fn` (`find_state`; given modules are then reduced to the outermost)."""
    if modules is not None and optimizers is not None:
        return list(modules), list(optimizers)
    found_modules, found_optimizers = find_state(fn)
    return (
        found_modules if modules is None else outermost(list(modules)),
        found_optimizers if optimizers is None else list(optimizers),
    )


def outermost(modules: list[nn.Module]) -> list[nn.Module]:
    """``modules`` without those that are submodules of another one of them, in their order."""
    inner = {id(sub) for m in modules for sub in m.modules() if sub is not m}
    return [m for m in modules if id(m) not in inner]
