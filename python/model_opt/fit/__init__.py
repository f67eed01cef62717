"""How much more fits: the largest batch size (or sequence length) whose training step fits a memory
budget under plain PyTorch, under the model_opt arena, and under the arena with the reordered step.

The step is captured with fake tensors, so nothing of the step's size is allocated: a GPU's budget is
answered on a machine without that memory. `family` makes the step a function of its size from four
small captures, `estimate` gives the three memory figures of one size, `search` finds the largest size
under the budget (doubling, then bisection).

    report = model_opt.fit(train_step, lambda b: (torch.randn(b, 3, 224, 224), torch.randint(0, 10, (b,))),
                           memory="16GiB")
    report["largest"]   # {'pytorch': 180, 'arena': 214, 'reordered': 223}

`fit_model` does the same for a model of the benchmark registry (``model-opt fit --model NAME``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from model_opt.capture.dataflow import DataflowGraph
from model_opt.capture.discover import find_state, outermost
from model_opt.capture.step import StepState, capture_step
from model_opt.errors import ArgumentError
from model_opt.fit.estimate import Estimate, estimate
from model_opt.fit.family import StepFamily
from model_opt.fit.search import largest_fitting
from model_opt.reports import FitReport

#: The three ways a step's memory is estimated, in the order reports list them (see `estimate`).
WAYS = ("pytorch", "arena", "reordered")

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_memory(text: str | int) -> int:
    """Bytes from ``"24GiB"``, ``"80GB"``, ``"1.5TiB"`` or a plain number of bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*", str(text))
        unit = m.group(2).lower() if m else ""
        if m is None or unit not in _UNITS:
            raise ArgumentError(f"memory {text!r} is not a size such as 24GiB, 80GB or 1073741824")
        value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ArgumentError(f"memory {text!r} must be more than 0 bytes")
    return value


def _storage_bytes(tensors: Sequence[torch.Tensor]) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def predicted_state_bytes(optimizers: Sequence[torch.optim.Optimizer]) -> int:
    """The bytes of the state the optimizers hold after their first step: what they hold now when they
    have stepped, else what their kind creates per parameter (Adam-like: 2 tensors, 3 with amsgrad;
    SGD: 1 with momentum; RMSprop: 1, +1 with momentum, +1 centered; Adagrad, Adadelta: 1, 2)."""
    from model_opt.reorder import optimizer_state_bytes

    held = optimizer_state_bytes(optimizers)
    if held or not optimizers:
        return held
    total = 0
    for opt in optimizers:
        for group in opt.param_groups:
            per_param = _state_tensors(type(opt).__name__, group)
            total += per_param * _storage_bytes([p for p in group["params"] if p.requires_grad])
    return total


def _state_tensors(kind: str, group: dict[str, Any]) -> int:
    if kind in ("Adam", "AdamW", "NAdam", "RAdam", "Adamax"):
        return 3 if group.get("amsgrad") else 2
    if kind == "SGD":
        return 1 if group.get("momentum", 0) else 0
    if kind == "RMSprop":
        return 1 + bool(group.get("momentum", 0)) + bool(group.get("centered"))
    if kind == "Adagrad":
        return 1
    if kind == "Adadelta":
        return 2
    return 2  # unknown: Adam's, the most common


def fit(
    step: Callable[..., Any],
    make_args: Callable[[int], tuple[Any, ...]],
    *,
    memory: int | str,
    sizes: tuple[int, int] = (1, 4096),
    variable: str = "batch_size",
    modules: Sequence[nn.Module] | None = None,
    optimizers: Sequence[torch.optim.Optimizer] | None = None,
    time_limit: float = 1.0,
    method: str = "auto",
    progress: Callable[[Estimate], None] | None = None,
) -> FitReport:
    """The largest size whose training step fits `memory`, three ways (`WAYS`).

    Args:
        step: the training-step function, as `model_opt.optimize` takes it (forward, backward,
            ``optimizer.step()``...).
        make_args: ``make_args(size)`` returns the positional arguments of one call at that size
            (e.g. a batch of ``size`` examples). Only their shapes matter: the step is traced with fake
            tensors.
        memory: the budget: bytes, or a size such as ``"24GiB"``.
        sizes: the smallest and largest size tried.
        variable: what the size is, for the report (``"batch_size"`` or ``"seq_len"``).
        modules, optimizers: what the step uses; found from the function by default, as `optimize` does.
        time_limit: seconds for the scheduler and for each placement, per size tried.
        method: the scheduler's method (`model_opt.SCHEDULE_METHODS`).
        progress: called with each size's `Estimate` as it is computed.

    Returns:
        A `model_opt.reports.FitReport`.

    Raises:
        ArgumentError: a bad budget or range. CaptureError: the step cannot be captured.
    """
    budget = parse_memory(memory)
    lo, hi = sizes
    if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
        raise ArgumentError(f"sizes {sizes} must be two integers with 1 <= smallest <= largest")
    if modules is None or optimizers is None:
        found_modules, found_optimizers = find_state(step)
        modules = found_modules if modules is None else outermost(list(modules))
        optimizers = found_optimizers if optimizers is None else optimizers
    modules, optimizers = list(modules), list(optimizers)
    started = time.perf_counter()

    def capture(size: int) -> DataflowGraph:
        return capture_step(step, make_args(size), {}, StepState.of(modules, optimizers)).dataflow

    family = StepFamily.of(capture)
    state_bytes = predicted_state_bytes(optimizers)
    estimates: dict[int, Estimate] = {}

    def at(size: int) -> Estimate:
        if size not in estimates:
            estimates[size] = estimate(family.at(size), size, state_bytes, time_limit, method)
            if progress is not None:
                progress(estimates[size])
        return estimates[size]

    largest = {
        way: largest_fitting(lambda s, w=way: getattr(at(s), f"{w}_bytes") <= budget, lo, hi) for way in WAYS
    }
    params = [p for m in modules for p in m.parameters()]
    weights = _storage_bytes(params)
    pytorch = largest["pytorch"]

    def ratio(way: str) -> float | None:
        n = largest[way]
        return None if n is None or not pytorch else n / pytorch

    return {
        "model": None,
        "variable": variable,
        "memory_bytes": budget,
        "sizes": [lo, hi],
        "largest": largest,
        "ratio_arena": ratio("arena"),
        "ratio_reordered": ratio("reordered"),
        "weights_bytes": weights,
        "optimizer_state_bytes": state_bytes,
        # Hugging Face accelerate's estimate-memory for training with Adam: weights, gradients and the
        # two Adam states, 4x the weights; it leaves activations out.
        "accelerate_adam_bytes": 4 * weights,
        "at_largest": {way: asdict(estimates[n]) if n is not None else None for way, n in largest.items()},
        "evaluations": [asdict(estimates[s]) for s in sorted(estimates)],
        "fitted": family.exact,
        "captures": family.captures,
        "seconds": time.perf_counter() - started,
    }


def fit_model(
    name: str,
    *,
    memory: int | str,
    sizes: tuple[int, int] = (1, 4096),
    optimizer: str = "adamw",
    time_limit: float = 1.0,
    method: str = "auto",
    progress: Callable[[Estimate], None] | None = None,
) -> FitReport:
    """`fit` for a model of the benchmark registry (`model_opt.apps.models.BENCH_MODELS`): its training
    step with `optimizer` (``sgd``, ``adam`` or ``adamw``), over the batch size. The model is built once
    (random weights), its optimizer's state created as its first step would."""
    from model_opt.apps import models
    from model_opt.apps.bench_reorder import OPTIMIZERS, _create_state
    from model_opt.capture.step import model_step

    if optimizer not in OPTIMIZERS:
        raise ArgumentError(f"unknown optimizer {optimizer!r}; use one of {sorted(OPTIMIZERS)}")
    torch.manual_seed(0)
    model, inputs, targets = models.example(name, 1)
    model.train()
    opt = OPTIMIZERS[optimizer](model.parameters())
    _create_state(opt)
    loss_fn = models.loss_for(name)

    def make_args(batch: int) -> tuple[Any, ...]:
        return models.batch_of(name, batch)

    report = fit(
        model_step(model, opt, loss_fn),
        make_args,
        memory=memory,
        sizes=sizes,
        modules=[model, *([loss_fn] if isinstance(loss_fn, nn.Module) else [])],
        optimizers=[opt],
        time_limit=time_limit,
        method=method,
        progress=progress,
    )
    report["model"] = name
    return report
