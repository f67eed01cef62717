"""Trains ResNet-18 for four steps through `model_opt.optimize` on the allocator runtime, in a fresh
process (an installed CPU allocator cannot be removed, and keeps one arena per process): one step as
is, one profiled, `plan()`, two planned steps. Prints as JSON what the runtime tests of an optimized
step compare: the losses, the arena, the simulated peak, the divergences, how many operators were
recomputed and how many values spilled (and what the spills moved), and the parameters' sums.

Usage: python served_step_worker.py SPEC, SPEC a JSON object: ``batch``, ``image`` (side in pixels),
``momentum`` (SGD's), and ``optimize``, the keyword arguments of `model_opt.optimize` (``allow`` as a
list).
"""

from __future__ import annotations

import json
import sys

import torch
import torchvision
from torch import nn

import model_opt
from model_opt.remat.host import counts
from model_opt.reorder import optimize

spec = json.loads(sys.argv[1])
torch.set_num_threads(1)
assert model_opt.install_cpu_allocator() is True
options = dict(spec["optimize"])
if "allow" in options:
    options["allow"] = tuple(options["allow"])
torch.manual_seed(0)
model = torchvision.models.resnet18(num_classes=10)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=spec["momentum"])
side, batch = spec["image"], spec["batch"]
batches = [(torch.randn(batch, 3, side, side), torch.randint(0, 10, (batch,))) for _ in range(4)]
step = optimize(model, opt, nn.functional.cross_entropy, *batches[0], **options)
losses = [float(step(*batches[0]))]
with model_opt.profile():
    losses.append(float(step(*batches[1])))
plan = model_opt.plan(time_limit=2.0)
divergences = 0
for b in batches[2:]:
    with model_opt.step():
        losses.append(float(step(*b)))
    divergences += model_opt.stats()["last_step"].get("divergences", 0)
print(
    json.dumps(
        dict(
            losses=losses,
            arena=plan["arena_bytes"],
            simulated_peak=step.report["peak_bytes"],
            divergences=divergences,
            recomputed=len((step.report["remat"] or {}).get("recomputed", [])),
            spilled=len((step.report["remat"] or {}).get("spilled", [])),
            host=vars(counts()),
            params=[float(p.double().sum()) for p in model.parameters()],
        )
    )
)
