"""Past the order's bound: the training step's simulated peak under eager order, the best order,
recomputation plus order (`model_opt.remat`), and hand activation checkpointing of every block.

    .venv/bin/python benches/remat.py [--models resnet50 vit_b_16 bert gpt2] [--batch 32]
        [--max-recompute 0.2 none] [--time-limit 10] [--no-dropout]

Each model is captured under fake tensors (random weights, nothing runs, SGD) as in
`model_opt.apps.bench_reorder`. Peaks are the simulated live bytes of the step (parameters, inputs,
activations, gradients; SGD without momentum has no state). "extra" is the recomputed operations over
the step's (`model_opt.remat.cost`): for hand checkpointing, the operations of the checkpointed step's
graph over the plain one's. The AOTAutograd columns are the peak of the loss's forward and backward
graphs as ``torch.compile``'s partitioners split them (`benches/aot_partition.py`: "default" saves what
autograd saves, "min-cut" recomputes cheap operators by a min cut, without a budget), counted the same
way (the SGD update, in place, is left out). "remat s" is the recomputation search's time; the order's
solve time is in the reorder table. The spill columns: the same search allowed to spill values to host
memory instead of (or as well as) recomputing them (``allow=("reorder", "spill")``, ``("reorder",
"remat", "spill")``), at the default host bandwidth (25 GB/s, `model_opt.remat.search.spill_cost`);
"spilled" is the bytes spilled (each moved out and back), "its cost" the extra cost over the step's
operations (recomputed operations plus the moves priced as operations). The ILP columns: recomputation
with ``remat_method="ilp"`` (twice the time limit, half each way): the 0/1 program's own model of the
peak for its choice (`model_opt.remat.select`), its status, the simulated peak once that choice is made
and the greedy rounds went on from it, and which of that and the greedy search alone was kept. Prints
a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

import aot_partition
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from model_opt.apps import models
from model_opt.apps.bench_reorder import OPTIMIZERS
from model_opt.capture.step import CapturedStep, capture_training_step
from model_opt.remat.cost import total_flops
from model_opt.step_plan import PlanOptions, peak_of_order, plan_captured

GB = 1e9
HEADER = [
    "model",
    "batch",
    "ops",
    "eager (GB)",
    "order (GB)",
    "order bound (GB)",
    "max_recompute",
    "remat + order (GB)",
    "vs order",
    "extra",
    "recomputed",
    "remat s",
    "stopped",
    "checkpoint every block (GB)",
    "its extra",
    "AOTAutograd default (GB)",
    "AOTAutograd min-cut (GB)",
    "spill + order (GB)",
    "spilled (GB)",
    "its cost",
    "remat + spill + order (GB)",
    "spilled (GB) / recomputed",
    "its cost",
    "ILP: program's peak (GB)",
    "its status",
    "program + greedy (GB)",
    "kept",
]


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks a user would checkpoint by hand."""
    if hasattr(model, "layer1"):  # torchvision ResNet
        return [b for name in ("layer1", "layer2", "layer3", "layer4") for b in getattr(model, name)]
    if hasattr(model, "encoder") and hasattr(model.encoder, "layers"):  # torchvision ViT
        return list(model.encoder.layers)
    for attr in ("h", "layer", "layers"):  # Hugging Face: GPT-2 .transformer.h, BERT .encoder.layer
        for module in model.modules():
            found = getattr(module, attr, None)
            if isinstance(found, nn.ModuleList):
                return list(found)
    raise ValueError(f"no blocks known for {type(model).__name__}")


def _checkpointed(model: nn.Module) -> nn.Module:
    for block in _blocks(model):
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)  # type: ignore[method-assign]
    return model


def _without_dropout(model: nn.Module) -> None:
    """Every dropout probability set to 0 (modules, and attention modules' own probabilities)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for attr in ("dropout_prob", "attn_dropout", "dropout"):
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, 0.0)


def _capture(name: str, batch: int, hand: bool, dropout: bool = True) -> CapturedStep:
    torch.manual_seed(0)
    model, inputs, targets = models.example(name, batch)
    model.train()
    if not dropout:
        _without_dropout(model)
    if hand:
        _checkpointed(model)
    opt = OPTIMIZERS["sgd"](model.parameters())
    return capture_training_step(model, opt, models.loss_for(name), inputs, targets)


def _aot_peaks(name: str, batch: int, dropout: bool) -> dict[str, int]:
    torch.manual_seed(0)
    model, inputs, targets = models.example(name, batch)
    model.train()
    if not dropout:
        _without_dropout(model)
    return aot_partition.peaks(model, models.loss_for(name), inputs, targets)


def _eager_peak(captured: CapturedStep) -> int:
    return peak_of_order(captured, range(len(captured.dataflow.ops)))


def _with(
    captured: CapturedStep,
    allow: tuple[str, ...],
    allowance: float | None,
    time_limit: float,
    remat_method: str = "greedy",
) -> tuple[int, dict[str, Any]]:
    """The peak `plan_captured` reaches with ``allow``, and its report's ``remat`` part."""
    options = PlanOptions.of(
        time_limit=time_limit, allow=allow, max_recompute=allowance, remat_method=remat_method
    )
    report = plan_captured(captured, options)[2]
    return report["peak_bytes"], report["remat"] or {}


def rows(
    name: str, batch: int, allowances: list[float | None], time_limit: float, dropout: bool = True
) -> list[list[str]]:
    captured = _capture(name, batch, hand=False, dropout=dropout)
    hand = _capture(name, batch, hand=True, dropout=dropout)
    base_flops = total_flops(captured.graph_module.graph.nodes)
    hand_extra = total_flops(hand.graph_module.graph.nodes) / max(base_flops, 1) - 1
    order_only = plan_captured(captured, PlanOptions.of(time_limit=time_limit))[2]
    aot = _aot_peaks(name, batch, dropout)
    out = []
    for allowance in allowances:
        remat_peak, remat = _with(captured, ("reorder", "remat"), allowance, time_limit)
        spill_peak, spill = _with(captured, ("reorder", "spill"), allowance, time_limit)
        both_peak, both = _with(captured, ("reorder", "remat", "spill"), allowance, time_limit)
        _, ilp = _with(captured, ("reorder", "remat"), allowance, 2 * time_limit, "ilp")
        program = ilp.get("program") or {}
        out.append(
            [
                name,
                str(batch),
                str(order_only["num_ops"]),
                f"{order_only['eager_peak_bytes'] / GB:.3f}",
                f"{order_only['peak_bytes'] / GB:.3f}",
                f"{order_only['lower_bound_bytes'] / GB:.3f}",
                "none" if allowance is None else f"{allowance:g}",
                f"{remat_peak / GB:.3f}",
                f"{100 * (remat_peak / order_only['peak_bytes'] - 1):+.1f}%",
                f"{100 * remat.get('extra_compute', 0):.2f}%",
                str(len(remat.get("recomputed", []))),
                f"{remat.get('seconds', 0):.1f}",
                remat.get("stopped", ""),
                f"{_eager_peak(hand) / GB:.3f}",
                f"{100 * hand_extra:.1f}%",
                f"{aot['default'] / GB:.3f}",
                f"{aot['min_cut'] / GB:.3f}",
                f"{spill_peak / GB:.3f}",
                f"{spill.get('spilled_bytes', 0) / GB:.3f}",
                f"{100 * spill.get('extra_cost', 0):.2f}%",
                f"{both_peak / GB:.3f}",
                f"{both.get('spilled_bytes', 0) / GB:.3f} / {len(both.get('recomputed', []))}",
                f"{100 * both.get('extra_cost', 0):.2f}%",
                f"{program.get('modeled_peak', 0) / GB:.3f}",
                program.get("status", ""),
                f"{program.get('final_peak', 0) / GB:.3f}",
                "program" if program.get("kept") else "greedy",
            ]
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "vit_b_16", "bert", "gpt2"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-recompute", nargs="+", default=["0.2", "none"])
    parser.add_argument("--time-limit", type=float, default=10.0)
    parser.add_argument("--no-dropout", action="store_true", help="every dropout probability set to 0")
    args = parser.parse_args()
    allowances = [None if a == "none" else float(a) for a in args.max_recompute]
    torch.set_num_threads(1)
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "|".join("---" for _ in HEADER) + "|", flush=True)
    for name in args.models:
        for row in rows(name, args.batch, allowances, args.time_limit, dropout=not args.no_dropout):
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
