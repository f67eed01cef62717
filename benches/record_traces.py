"""Records real training-step traces with the runtime (CPU shim) and plans them with each method.

    .venv/bin/python benches/record_traces.py [--out benches/data] [--time-limit 1]

For each model (torchvision resnet18, resnet50 and resnet152; nn.Transformers of 3+3 and 12+12
layers), one warm-up step, one profiled
step, then `model_opt.save_trace`. Each trace is planned with `greedy` and `auto`; prints a markdown
table (buffers, lower bound, arena, status, time) for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import model_opt


def _step(model: nn.Module, loss_of: Callable[[], torch.Tensor]) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_of().backward()
        opt.step()

    return train_step


def workloads() -> dict[str, Callable[[], None]]:
    import torchvision

    torch.manual_seed(0)
    out: dict[str, Callable[[], None]] = {}
    for name, batch, px in (
        ("resnet18_b8_112px", 8, 112),
        ("resnet50_b4_112px", 4, 112),
        ("resnet152_b2_64px", 2, 64),
    ):
        model = getattr(torchvision.models, name.split("_")[0])(num_classes=10)
        x, y = torch.randn(batch, 3, px, px), torch.randint(0, 10, (batch,))
        out[name] = _step(model, lambda m=model, x=x, y=y: nn.functional.cross_entropy(m(x), y))
    for name, layers in (("transformer_3x3_b8", 3), ("transformer_12x12_b8", 12)):
        tr = nn.Transformer(
            d_model=128,
            nhead=4,
            num_encoder_layers=layers,
            num_decoder_layers=layers,
            dim_feedforward=256,
            batch_first=True,
        )
        src, tgt = torch.randn(8, 32, 128), torch.randn(8, 24, 128)
        out[name] = _step(tr, lambda tr=tr, src=src, tgt=tgt: nn.functional.mse_loss(tr(src, tgt), tgt))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("benches/data"))
    ap.add_argument("--time-limit", type=float, default=1.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model_opt.install_cpu_allocator()
    args.out.mkdir(parents=True, exist_ok=True)
    print("| trace | method | buffers | lower bound | arena | arena / lower bound | status | time (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, train_step in workloads().items():
        train_step()
        with model_opt.profile():
            train_step()
        path = args.out / f"{name}.csv"
        model_opt.save_trace(path)
        for method in ("greedy", "auto"):
            r = model_opt.plan_csv(path, method=method, time_limit=args.time_limit)
            print(
                f"| {name} | {method} | {r['buffers']} | {r['lower_bound_bytes']} | {r['peak_bytes']} | "
                f"{r['ratio']:.4f} | {r['status']} | {r['seconds']:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
