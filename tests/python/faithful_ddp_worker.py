"""One rank of `test_faithful.py::test_ddp_two_ranks_under_torchrun_is_bit_identical`.

Started by ``torchrun --standalone --nproc_per_node=2 faithful_ddp_worker.py OUT_PREFIX``. Each rank builds
two identical DDP models (gloo, CPU; batch norm buffers, dropout), trains one eagerly and one through
``model_opt.optimize`` with the same rank-dependent data and seeds, with gradient accumulation under
``no_sync()`` every other call, and writes ``OUT_PREFIX.rankN.json``: the losses of both, whether the
parameters, buffers and gradients are bit-identical, and the parameters' checksum (equal across ranks).
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys

import torch
import torch.distributed as dist
from torch import nn

from model_opt import optimize


def main(out_prefix: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 4))
    models, opts, steps = [], [], []
    for _ in range(2):
        model = nn.parallel.DistributedDataParallel(copy.deepcopy(base))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)

        def train_step(x: torch.Tensor, y: torch.Tensor, update: bool, model=model, opt=opt) -> torch.Tensor:
            loss = nn.functional.cross_entropy(model(x), y) / 2
            loss.backward()
            if update:
                opt.step()
                opt.zero_grad()
            return loss

        models.append(model)
        opts.append(opt)
        steps.append(train_step)
    g = torch.Generator().manual_seed(1 + rank)
    batches = [(torch.randn(6, 8, generator=g), torch.randint(0, 4, (6,), generator=g)) for _ in range(8)]
    steps[1] = optimize(steps[1], *batches[0], True, time_limit=0.5)
    losses: list[list[float]] = [[], []]
    for i, (x, y) in enumerate(batches):
        update = i % 2 == 1
        for k in (0, 1):
            torch.manual_seed(100 + 10 * i + rank)
            sync = contextlib.nullcontext() if update else models[k].no_sync()
            with sync:
                losses[k].append(float(steps[k](x, y, update)))
    a, b = models
    same = all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    same_grads = all(
        (p.grad is None and q.grad is None)
        or (p.grad is not None and q.grad is not None and torch.equal(p.grad, q.grad))
        for p, q in zip(a.parameters(), b.parameters())
    )
    checksum = float(sum(p.double().sum() for p in b.parameters()))
    result = {
        "rank": rank,
        "eager_losses": losses[0],
        "losses": losses[1],
        "state_equal": same,
        "grads_equal": same_grads,
        "checksum": checksum,
        "report": {k: v for k, v in steps[1].report.items() if k != "order"},
    }
    with open(f"{out_prefix}.rank{rank}.json", "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
