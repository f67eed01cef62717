"""One training run on one allocator in a fresh process, printed as JSON (for tests/python/test_cuda.py).

Usage: python cuda_worker.py {smoke,resnet18,gpt2} {model_opt,default} [--device cuda|cpu] [--steps N]

With `model_opt` on CUDA, `model_opt.allocator()` is installed before anything starts CUDA (PyTorch takes
its allocator once per process, before CUDA is initialised); the run is one warm-up step, one profiled
step, `model_opt.plan()`, then N planned steps. With `default`, the same number of steps run on
PyTorch's own allocator, and its peak reservation is reported. Same seeds, deterministic cuDNN and
cuBLAS, so the two runs' losses are comparable. `--device cpu` runs the same on the CPU shim (to check
this script without a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Callable

# cuBLAS needs this for deterministic results; it is read when cuBLAS starts, so set before torch.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import model_opt  # noqa: E402

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


def resnet18(dev: torch.device, n: int) -> tuple[nn.Module, torch.optim.Optimizer, LossFn, list[Batch]]:
    import torchvision

    model = torchvision.models.resnet18(num_classes=10).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = [
        (torch.randn(8, 3, 64, 64, device=dev), torch.randint(0, 10, (8,), device=dev)) for _ in range(n)
    ]

    def loss_fn(m: nn.Module, b: Batch) -> torch.Tensor:
        return nn.functional.cross_entropy(m(b[0]), b[1])

    return model, opt, loss_fn, batches


def gpt2(dev: torch.device, n: int) -> tuple[nn.Module, torch.optim.Optimizer, LossFn, list[Batch]]:
    from transformers import GPT2Config, GPT2LMHeadModel

    # Random weights from a config: nothing is downloaded. Eager attention: no fused kernels whose
    # backward is nondeterministic.
    config = GPT2Config(
        vocab_size=1000,
        n_positions=128,
        n_embd=128,
        n_layer=2,
        n_head=4,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )
    model = GPT2LMHeadModel(config).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = []
    for _ in range(n):
        ids = torch.randint(0, config.vocab_size, (4, 64), device=dev)
        batches.append((ids, ids))

    def loss_fn(m: nn.Module, b: Batch) -> torch.Tensor:
        return m(input_ids=b[0], labels=b[1]).loss  # type: ignore[no-any-return]

    return model, opt, loss_fn, batches


def smoke(dev: torch.device) -> dict[str, Any]:
    """Tensors on the device through the allocator: values right, memory given back."""
    x = torch.arange(1 << 20, dtype=torch.float32, device=dev).reshape(1024, 1024)
    y = (x * 2 + 1).sum(dim=1)
    expected = (2 * torch.arange(1 << 20, dtype=torch.float64).reshape(1024, 1024) + 1).sum(dim=1)
    ok = torch.allclose(y.double().cpu(), expected, rtol=1e-5)
    z = x @ x.T
    finite = bool(torch.isfinite(z).all())
    if dev.type == "cuda":
        torch.cuda.synchronize()
    during = model_opt.stats()["allocated_bytes"]
    del x, y, z
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # model_opt's empty_cache hook
    return {"values_ok": bool(ok), "finite": finite, "allocated_during": during}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=["smoke", "resnet18", "gpt2"])
    ap.add_argument("allocator", choices=["model_opt", "default"])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args()
    dev = torch.device(a.device)
    planned = a.allocator == "model_opt"
    if planned:
        if a.device == "cuda":
            # First of all: PyTorch accepts an allocator only before CUDA is initialised.
            torch.cuda.memory.change_current_allocator(model_opt.allocator())
        else:
            model_opt.install_cpu_allocator()
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    # warn_only: some backward kernels (adaptive pooling) have no deterministic variant.
    torch.use_deterministic_algorithms(True, warn_only=True)
    out: dict[str, Any] = {"model": a.model, "allocator": a.allocator, "device": a.device}
    if a.device == "cuda":
        out["gpu"] = torch.cuda.get_device_name(0)
        out["torch"] = torch.__version__
        out["hooks"] = sorted(model_opt.runtime.hooks_installed)

    if a.model == "smoke":
        out["smoke"] = smoke(dev)
    else:
        torch.manual_seed(0)
        total = a.steps + 2
        model, opt, loss_fn, batches = {"resnet18": resnet18, "gpt2": gpt2}[a.model](dev, total)
        model.train()

        def sync() -> None:
            if a.device == "cuda":
                torch.cuda.synchronize()

        def train_step(i: int) -> float:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, batches[i])
            loss.backward()
            opt.step()
            return float(loss.item())

        losses: list[float] = []
        step_stats: list[dict[str, Any]] = []
        times: list[float] = []
        torch.manual_seed(1)  # dropout: both runs draw the same masks
        if a.device == "cuda":
            torch.cuda.manual_seed(1)
        losses.append(train_step(0))
        if planned:
            with model_opt.profile():
                losses.append(train_step(1))
            out["plan"] = model_opt.plan(time_limit=5.0)
        else:
            losses.append(train_step(1))
        for i in range(2, total):
            sync()
            t = time.perf_counter()
            if planned:
                with model_opt.step():
                    losses.append(train_step(i))
                step_stats.append(model_opt.stats()["last_step"])
            else:
                losses.append(train_step(i))
            sync()
            times.append(time.perf_counter() - t)
        out["losses"] = losses
        out["step_stats"] = step_stats
        out["step_seconds"] = times
    if planned:
        out["stats"] = model_opt.stats()
    if a.device == "cuda" and not planned:
        m = torch.cuda.memory_stats()
        out["torch_reserved_peak_bytes"] = int(m["reserved_bytes.all.peak"])
        out["torch_allocated_peak_bytes"] = int(m["allocated_bytes.all.peak"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
