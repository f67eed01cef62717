"""Runs a small model's training on CPU twice in one fresh process, first on PyTorch's default CPU
allocator and then on model_opt's planned arena, and prints what the test compares as JSON.

Usage: python runtime_e2e_worker.py {resnet18,transformer} PLANNED_STEPS [first]

With `first`, the very first step of training is profiled (no warm-up step before it).
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

import torch
from torch import nn

import model_opt

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]
Setup = tuple[nn.Module, torch.optim.Optimizer, LossFn, list[Batch]]
RunResult = tuple[list[float], list[torch.Tensor], list[dict[str, Any]], dict[str, Any]]


def resnet18() -> Setup:
    import torchvision

    model = torchvision.models.resnet18(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = [(torch.randn(2, 3, 64, 64), torch.randint(0, 10, (2,))) for _ in range(8)]

    def loss_fn(m: nn.Module, b: Batch) -> torch.Tensor:
        return nn.functional.cross_entropy(m(b[0]), b[1])

    return model, opt, loss_fn, batches


def transformer() -> Setup:
    model = nn.Transformer(
        d_model=32,
        nhead=4,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dim_feedforward=64,
        dropout=0.1,
        batch_first=True,
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = [(torch.randn(2, 12, 32), torch.randn(2, 9, 32)) for _ in range(8)]

    def loss_fn(m: nn.Module, b: Batch) -> torch.Tensor:
        src, tgt = b
        return nn.functional.mse_loss(m(src, tgt), tgt)

    return model, opt, loss_fn, batches


MODELS = {"resnet18": resnet18, "transformer": transformer}


def run(name: str, steps: int, planned: bool, warmup: bool) -> RunResult:
    """`steps` planned steps after the profiled one (preceded by an unprofiled warm-up step when
    `warmup`); the reference runs the same number of steps on PyTorch's allocator."""
    torch.manual_seed(0)
    model, opt, loss_fn, batches = MODELS[name]()
    model.train()

    def train_step(i: int) -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model, batches[i % len(batches)])
        loss.backward()
        opt.step()
        return float(loss.item())

    losses: list[float] = []
    step_stats: list[dict[str, Any]] = []
    plan_report: dict[str, Any] = {}
    first = 1 if warmup else 0
    if planned:
        if warmup:
            # The first step of training creates the optimizer's state and takes other one-off
            # paths, so the step that is profiled is the second one.
            losses.append(train_step(0))
        with model_opt.profile():
            losses.append(train_step(first))
        plan_report = model_opt.plan(time_limit=5.0)
        for i in range(first + 1, first + 1 + steps):
            with model_opt.step():
                losses.append(train_step(i))
            step_stats.append(model_opt.stats()["last_step"])
    else:
        for i in range(first + 1 + steps):
            losses.append(train_step(i))
    params = [p.detach().clone() for p in model.parameters()]
    return losses, params, step_stats, plan_report


def main() -> None:
    name, steps = sys.argv[1], int(sys.argv[2])
    warmup = len(sys.argv) < 4 or sys.argv[3] != "first"
    torch.set_num_threads(1)
    ref_losses, ref_params, _, _ = run(name, steps, planned=False, warmup=warmup)
    assert model_opt.install_cpu_allocator() is True
    losses, params, step_stats, report = run(name, steps, planned=True, warmup=warmup)
    identical = len(params) == len(ref_params) and all(
        a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) for a, b in zip(params, ref_params)
    )
    stats = model_opt.stats()
    print(
        json.dumps(
            {
                "ref_losses": ref_losses,
                "losses": losses,
                "params_identical": identical,
                "steps": step_stats,
                "plan": report,
                "stats": stats,
            }
        )
    )


if __name__ == "__main__":
    main()
