"""End-to-end CPU training step time with model_opt's planned arena against PyTorch's default CPU
allocator, in one process: blocks of steps alternate between the two allocators so drift (caches,
frequency) hits both alike.

    .venv/bin/python benches/runtime_train.py [--model resnet18|transformer] [--rounds 10] [--steps 5]

Prints the median step time of each allocator and their ratio (model_opt / default).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
from torch import nn

import model_opt


def make(model_name: str) -> Callable[[], float]:
    torch.manual_seed(0)
    if model_name == "resnet18":
        import torchvision

        model: nn.Module = torchvision.models.resnet18(num_classes=10)
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 10, (2,))

        def loss_fn() -> torch.Tensor:
            return nn.functional.cross_entropy(model(x), y)
    else:
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
        src, tgt = torch.randn(2, 12, 32), torch.randn(2, 9, 32)

        def loss_fn() -> torch.Tensor:
            return nn.functional.mse_loss(model(src, tgt), tgt)

    def train_step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        return float(loss.item())

    return train_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="resnet18", choices=["resnet18", "transformer"])
    ap.add_argument("--rounds", type=int, default=10, help="blocks per allocator")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per block")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model_opt.install_cpu_allocator()
    train_step = make(args.model)
    train_step()  # warm-up: optimizer state, one-off paths
    with model_opt.profile():
        train_step()
    report = model_opt.plan()

    default_times: list[float] = []
    planned_times: list[float] = []
    for _ in range(args.rounds):
        model_opt.runtime.restore_default_cpu_allocator()
        train_step()  # the first step after a switch frees tensors of the other allocator
        for _ in range(args.steps):
            t = time.perf_counter()
            train_step()
            default_times.append(time.perf_counter() - t)
        model_opt.install_cpu_allocator()
        with model_opt.step():
            train_step()
        for _ in range(args.steps):
            t = time.perf_counter()
            with model_opt.step():
                train_step()
            planned_times.append(time.perf_counter() - t)
    s = model_opt.stats()
    d, p = statistics.median(default_times), statistics.median(planned_times)
    print(f"model {args.model}, threads {args.threads}, {len(default_times)} timed steps per allocator")
    arena, bound = report["arena_bytes"], report["lower_bound_bytes"]
    print(f"plan: arena {arena} B, lower bound {bound} B, {report['method']}")
    print(f"divergences {s['divergences']}, transient fallbacks {s['transient_fallbacks']}")
    print(f"default allocator   median {d * 1e3:8.2f} ms")
    print(f"model_opt planned   median {p * 1e3:8.2f} ms")
    print(f"ratio model_opt/default {p / d:.3f}")


if __name__ == "__main__":
    main()
