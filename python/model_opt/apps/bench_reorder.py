"""Operator-reordering benchmark over the MODel model set (Steiner et al., ICML 2023).

For each model, mode (train: forward + loss + backward + SGD step; eval: forward without gradients) and
batch size, the step is captured under fake tensors (no real compute, random weights, no download),
scheduled, and the simulated peaks are reported: eager (captured) order, reordered, the saving, the
order-independent lower bound, solve time, method and status.
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from model_opt.apps import models
from model_opt.capture.step import CapturedStep, capture_inference_step, capture_training_step
from model_opt.errors import ArgumentError
from model_opt.reorder import measure_peak_bytes, optimizer_state_bytes, schedule_captured

#: Optimizers a training row can use (``--optimizer``).
OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.01),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-4),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-4),
}


def resolve_models(names: list[str]) -> list[str]:
    """The models named on a command line (``all`` = every one); raises `ArgumentError` (a ValueError)
    naming unknown ones."""
    chosen = list(models.BENCH_MODELS) if names == ["all"] else names
    unknown = [m for m in chosen if m not in models.BENCH_MODELS]
    if unknown:
        raise ArgumentError(f"unknown model(s) {unknown}; use {list(models.BENCH_MODELS)} or 'all'")
    return chosen


GB = 1e9


@dataclass
class Row:
    model: str
    mode: str
    batch: int
    ops: int
    eager_peak_gb: float
    peak_gb: float
    saved_pct: float
    lower_bound_gb: float
    solve_s: float
    method: str
    status: str
    capture_s: float
    #: Peaks measured by running each order for real (only with ``measure``; 0 otherwise).
    measured_eager_gb: float = 0.0
    measured_peak_gb: float = 0.0
    error: str = ""


def create_state(optimizer: torch.optim.Optimizer) -> None:
    """Creates the optimizer's state as its first step would, without changing a parameter: one step on
    zero gradients at learning rate 0 (the state's values do not matter to a memory benchmark)."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    lrs = [g["lr"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] = 0.0
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for g, lr in zip(optimizer.param_groups, lrs):
        g["lr"] = lr
    for p in params:
        p.grad = None


def training_setup(
    name: str, batch: int, optimizer: str
) -> tuple[nn.Module, torch.optim.Optimizer, tuple[Any, ...], Any]:
    """Model `name` in train mode (seed 0) with `optimizer` (a key of `OPTIMIZERS`), its state created
    as its first step would, and one batch of `batch`: ``(model, optimizer, inputs, targets)``."""
    if optimizer not in OPTIMIZERS:
        raise ArgumentError(f"unknown optimizer {optimizer!r}; use one of {sorted(OPTIMIZERS)}")
    torch.manual_seed(0)
    model, inputs, targets = models.example(name, batch)
    model.train()
    opt = OPTIMIZERS[optimizer](model.parameters())
    create_state(opt)
    return model, opt, inputs, targets


def capture_with_inputs(
    name: str, mode: str, batch: int, optimizer: str = "sgd"
) -> tuple[CapturedStep, tuple[Any, ...], int]:
    """Captures one step of `name` in `mode` ("train" or "eval") at `batch` with ``optimizer`` (a key
    of `OPTIMIZERS`, its state created first); returns it with the real arguments of a call
    (``captured.run(gm, *args)``: ``(inputs, targets)``, or ``(inputs,)`` in eval mode) and the bytes of
    the optimizer's state (resident, outside the graph)."""
    if mode == "eval":
        torch.manual_seed(0)
        model, inputs, _ = models.example(name, batch)
        model.eval()
        return capture_inference_step(model, inputs), (inputs,), 0
    model, opt, inputs, targets = training_setup(name, batch, optimizer)
    captured = capture_training_step(model, opt, models.loss_for(name), inputs, targets)
    return captured, (inputs, targets), optimizer_state_bytes([opt])


def capture(name: str, mode: str, batch: int) -> CapturedStep:
    """Captures one step of `name` in `mode` ("train" or "eval") at `batch`."""
    return capture_with_inputs(name, mode, batch)[0]


def run_one(
    name: str,
    mode: str,
    batch: int,
    time_limit: float,
    method: str = "auto",
    measure: bool = False,
    optimizer: str = "sgd",
) -> Row:
    """Captures and schedules one configuration; errors become a row with `error` set. With `measure`,
    both orders also run once for real and their peaks are measured (see `measure_peak_bytes`). Peaks
    include the optimizer's state (resident, outside the graph)."""
    started = time.perf_counter()
    try:
        captured, args, state_bytes = capture_with_inputs(name, mode, batch, optimizer)
    except Exception as e:  # a model that cannot be built or traced is reported, not fatal
        return Row(
            name, mode, batch, 0, 0, 0, 0, 0, 0, "", "error", 0, error=f"{type(e).__name__}: {e}"[:200]
        )
    capture_s = time.perf_counter() - started
    gm, r = schedule_captured(captured, method=method, time_limit=time_limit)
    eager, peak = r["eager_peak_bytes"] + state_bytes, r["peak_bytes"] + state_bytes
    row = Row(
        model=name,
        mode=mode if mode == "eval" or optimizer == "sgd" else f"{mode} ({optimizer})",
        batch=batch,
        ops=r["num_ops"],
        eager_peak_gb=eager / GB,
        peak_gb=peak / GB,
        saved_pct=100.0 * (eager - peak) / eager if eager else 0.0,
        lower_bound_gb=(r["lower_bound_bytes"] + state_bytes) / GB,
        solve_s=r["solve_seconds"],
        method=r["method"],
        status=r["status"],
        capture_s=capture_s,
    )
    if measure:
        row.measured_eager_gb = (
            measure_peak_bytes(captured.graph_module, captured, *args) + state_bytes
        ) / GB
        row.measured_peak_gb = (measure_peak_bytes(gm, captured, *args) + state_bytes) / GB
    return row


HEADER = [
    "model",
    "mode",
    "batch",
    "ops",
    "eager peak (GB)",
    "reordered peak (GB)",
    "saved",
    "lower bound (GB)",
    "solve (s)",
    "method",
    "status",
    "capture (s)",
    "measured eager / reordered (GB)",
]


def markdown_row(r: Row) -> str:
    if r.error:
        cells = [r.model, r.mode, str(r.batch), "", "", "", "", "", "", "", f"error: {r.error}", "", ""]
    else:
        cells = [
            r.model,
            r.mode,
            str(r.batch),
            str(r.ops),
            f"{r.eager_peak_gb:.4f}",
            f"{r.peak_gb:.4f}",
            f"{-r.saved_pct:.1f}%",
            f"{r.lower_bound_gb:.4f}",
            f"{r.solve_s:.2f}",
            r.method,
            r.status,
            f"{r.capture_s:.1f}",
            f"{r.measured_eager_gb:.4f} / {r.measured_peak_gb:.4f}" if r.measured_eager_gb else "",
        ]
    return "| " + " | ".join(cells) + " |"


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += [markdown_row(r) for r in rows]
    ok = [r for r in rows if not r.error]
    if ok:
        solves = sorted(r.solve_s for r in ok)
        median = (
            solves[len(solves) // 2]
            if len(solves) % 2
            else (solves[len(solves) // 2 - 1] + solves[len(solves) // 2]) / 2
        )
        mean_saved = sum(r.saved_pct for r in ok) / len(ok)
        lines.append("")
        lines.append(f"{len(ok)} configurations: mean saving {mean_saved:.1f}%, median solve {median:.2f} s.")
    return "\n".join(lines)


def write_csv(rows: list[Row], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0]).keys()) if rows else ["model"])
        writer.writeheader()
        for r in rows:
            writer.writerow(asdict(r))
